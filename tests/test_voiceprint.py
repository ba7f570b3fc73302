"""The speaker encoder: real RAVDESS voices, the weights' hash check, and the match with Resemblyzer itself."""

from __future__ import annotations

import importlib.util
import pickle

import numpy as np
import pytest

from calibration.attribution import PATIENT, UNKNOWN, AttributionConfig, Voiceprint, attribute

pytestmark = pytest.mark.skipif(importlib.util.find_spec("resemblyzer") is None,
                                reason="the speaker encoder's weights come with the resemblyzer package "
                                       "(pip install --no-deps resemblyzer==0.1.4)")


@pytest.fixture(scope="module")
def encoder():
    import torch

    from monitor.model.voiceprint import ResemblyzerEncoder

    torch.set_num_threads(2)
    return ResemblyzerEncoder()


@pytest.fixture(scope="module")
def voices(ravdess_dir):
    """Two actors of the same sex (01, 03: male): neutral clips to enrol, a happy clip (normal intensity) to test."""
    from monitor.audio.io import read_audio

    out = {}
    for actor in ("01", "03"):
        folder = ravdess_dir / f"Actor_{actor}"
        out[actor] = {
            "enrol": [read_audio(folder / f"03-01-01-01-0{s}-01-{actor}.wav") for s in (1, 2)],
            "test": read_audio(folder / f"03-01-03-01-01-01-{actor}.wav"),
        }
    return out


def test_the_encoder_meets_the_interface(encoder):
    from monitor.model.voiceprint import RESEMBLYZER_SHA256, SpeakerEncoder

    assert isinstance(encoder, SpeakerEncoder)
    assert (encoder.name, encoder.dim, encoder.sha256) == ("resemblyzer-ge2e", 256, RESEMBLYZER_SHA256)
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.05 for n in (4000, 16000, 70000)]  # 0.25 s to 4.4 s
    emb = encoder.embed(waves)
    assert emb.shape == (3, 256) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(encoder.embed(waves[1:2])[0], emb[1], atol=1e-5)  # batching changes nothing
    assert encoder.embed([]).shape == (0, 256)


def test_the_same_speaker_scores_higher_than_another(encoder, voices):
    from monitor.model.voiceprint import voiceprint_of

    prints = {actor: voiceprint_of(encoder, v["enrol"], source=actor) for actor, v in voices.items()}
    assert prints["01"].encoder == encoder.name and prints["01"].encoder_version == encoder.version
    for actor, other in (("01", "03"), ("03", "01")):
        e = encoder.embed([voices[actor]["test"]])[0]  # happy speech against a neutral enrolment
        own, foreign = float(prints[actor].score(e)), float(prints[other].score(e))
        assert own > foreign + 0.1, (actor, own, foreign)
    # the rule on real voices: actor 01 as the patient, actor 03 as the clinician
    emb = encoder.embed([voices["01"]["test"], voices["03"]["test"]])
    got = attribute(emb, [3.0, 3.0], prints["01"], None, AttributionConfig(threshold=0.0, min_seconds=0.0))
    assert got[0].speaker == PATIENT
    assert got[0].speaker_score is not None and got[1].speaker_score is not None
    assert got[0].speaker_score > got[1].speaker_score
    # JSON round trip of a real voiceprint keeps its scores exactly
    back = Voiceprint.from_json(prints["01"].to_json())
    assert float(back.score(emb[0])) == float(prints["01"].score(emb[0]))
    assert attribute(emb[:1], 0.4, prints["01"])[0].speaker == UNKNOWN  # too short to tell


def test_a_wrong_hash_is_refused_with_a_clear_error(encoder):
    from monitor.model.voiceprint import ResemblyzerEncoder, SpeakerEncoderError

    with pytest.raises(SpeakerEncoderError, match=r"refusing .*pretrained\.pt: sha256 [0-9a-f]{64} is not the "
                                                  r"expected 0{64}"):
        ResemblyzerEncoder(expected_sha256="0" * 64)


def test_weights_are_never_unpickled_as_code(tmp_path):
    """A pickle that would run code is refused twice: by the hash, and without one by weights_only loading."""
    from monitor.model.voiceprint import ResemblyzerEncoder, SpeakerEncoderError

    victim = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(victim), "w"))

    weights = tmp_path / "pretrained.pt"
    weights.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(SpeakerEncoderError, match="sha256"):
        ResemblyzerEncoder(weights=weights)
    with pytest.raises(SpeakerEncoderError, match="cannot read"):
        ResemblyzerEncoder(weights=weights, expected_sha256=None)
    assert not victim.exists()
    with pytest.raises(SpeakerEncoderError, match="not found"):
        ResemblyzerEncoder(weights=tmp_path / "absent.pt")


def test_embeddings_match_resemblyzer_itself(encoder, voices):
    """Same mel features and the same network as the package (where its librosa and webrtcvad import)."""
    try:
        import librosa
        from resemblyzer import VoiceEncoder, preprocess_wav
    except Exception as exc:  # resemblyzer installed without its own dependencies
        pytest.skip(f"resemblyzer's own code does not import here: {exc}")
    from monitor.model.voiceprint import mel_filterbank

    np.testing.assert_allclose(mel_filterbank(), librosa.filters.mel(sr=16000, n_fft=400, n_mels=40), atol=1e-7)
    reference = VoiceEncoder(device="cpu", verbose=False)
    waves = [voices["01"]["test"], voices["03"]["enrol"][0]]
    theirs = np.stack([reference.embed_utterance(preprocess_wav(w)) for w in waves])
    np.testing.assert_allclose(encoder.embed(waves), theirs, atol=1e-4)
