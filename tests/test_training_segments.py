"""Training on what the monitor sees: live-VAD segments, room augmentation, layer weights, a centred prior,
clip-level scores, and a Whisper build whose training features are the runtime's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from training.augment import AUGMENTATIONS, Augmentation
from training.corpora import Item, Manifest
from training.experiments import clip_level, lean, loo_baselines
from training.layermix import fit_layer_mix
from training.sampling import centred_class_shares, sample_weights
from tests.conftest import corpus_dir


def test_segments_are_the_live_vad_cuts_and_are_cached(tmp_path, monkeypatch):
    from monitor.audio.segmenter import segment_file
    from training import segments as S
    from training.corpora import load_ravdess

    clips = load_ravdess(corpus_dir("ravdess")).where(lambda it: "Actor_03" in it.path)[:4]
    manifest = S.segment_manifest(clips, cache=tmp_path, progress=False)
    assert len(manifest) >= len(clips)
    for item in manifest:
        live = segment_file(item.path)
        assert item.is_segment and item.clip in clips.keys
        assert any(abs(s.t_start - item.start) < 1e-3 and abs(s.t_end - item.end) < 1e-3 for s in live)
        assert item.label == next(c for c in clips if c.key == item.clip).label
    # a second run reads the cache: the VAD does not run again
    monkeypatch.setattr(S, "segment_file", lambda *a, **k: pytest.fail("segmented again"))
    again = S.segment_manifest(clips, cache=tmp_path, progress=False)
    assert [(i.key, i.start, i.end) for i in again] == [(i.key, i.start, i.end) for i in manifest]


def test_a_clip_without_speech_stays_one_whole_clip_segment(tmp_path):
    from training.segments import segment_manifest

    path = tmp_path / "hum.wav"
    sf.write(str(path), np.zeros(16_000, np.float32), 16_000)
    manifest = segment_manifest(Manifest([Item(str(path), "neutral", "s1", "x")]), progress=False)
    assert len(manifest) == 1 and (manifest[0].start, manifest[0].end) == (0.0, 1.0)


def test_augmentations_are_deterministic_keep_length_and_change_the_sound():
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(24_000)).astype(np.float32)
    for name in AUGMENTATIONS:
        aug = Augmentation.from_spec(name)
        a, b, other = aug(wave, "clip-1"), aug(wave, "clip-1"), aug(wave, "clip-2")
        assert np.array_equal(a, b), name
        assert np.isfinite(a).all() and a.dtype == np.float32
        if name == "speed":
            assert len(a) != len(wave)
            continue
        assert len(a) == len(wave) and not np.allclose(a, wave), name
        if name in ("gain", "noise", "room", "reverb"):
            assert not np.array_equal(a, other), name
    with pytest.raises(ValueError, match="unknown augmentation"):
        Augmentation.from_spec("underwater")


def test_the_centred_prior_has_zero_mean_valence_and_moves_the_shares_little():
    from calibration.anchors import get_anchor_set

    table = get_anchor_set("all")
    for classes in (["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise", "excited"],
                    ["angry", "excited", "happy", "sad"]):
        shares = centred_class_shares(classes)
        assert sum(shares.values()) == pytest.approx(1.0)
        assert sum(s * table.anchor(c)[0] for c, s in shares.items()) == pytest.approx(0.0, abs=1e-9)
        assert min(shares.values()) >= 0.25 / len(classes) - 1e-12
    labels = ["angry"] * 30 + ["sad"] * 10 + ["happy"] * 5 + ["excited"] * 5
    w = sample_weights(labels, ["a"] * 40 + ["b"] * 10, "centred")
    mean_v = sum(wi * table.anchor(y)[0] for wi, y in zip(w, labels, strict=True))
    assert w.sum() == pytest.approx(1.0) and mean_v == pytest.approx(0.0, abs=1e-9)


def test_learnt_layer_weights_favour_the_layer_that_knows_the_classes():
    rng = np.random.default_rng(0)
    n, layers, dim = 300, 4, 16
    labels = np.repeat(["angry", "sad", "happy"], n // 3)
    x = rng.normal(0, 1, (n, layers, dim)) * np.array([1.0, 10.0, 1.0, 3.0])[None, :, None]  # scales differ
    x[:, 2, :3] += 2.5 * np.eye(3)[[["angry", "sad", "happy"].index(c) for c in labels]]
    mix = fit_layer_mix(x, labels.tolist(), seed=0)
    assert int(np.argmax(mix.weights)) == 2 and mix.weights[2] > 0.5
    assert fit_layer_mix(x, labels.tolist(), mode="mean").weights == pytest.approx(np.full(layers, 0.25))
    # the runtime backbone mixes exactly as training did
    from monitor.model.whisper import WhisperBackbone

    class Stub(torch.nn.Module):
        config = type("C", (), {"d_model": dim, "encoder_layers": layers - 1, "max_source_positions": 1500,
                                "num_mel_bins": 80})()

    backbone = WhisperBackbone(Stub())
    backbone.load_bundle_state(mix.backbone_state())
    got = backbone.mix(torch.tensor(x[:5], dtype=torch.float32)).detach().numpy()
    np.testing.assert_allclose(got, mix.transform(x[:5]), rtol=1e-4, atol=1e-5)


def _segments(clip: str, spans, label="sad", speaker="s1") -> list[Item]:
    return [Item(f"{clip}.wav", label, speaker, "c", utterance=f"{clip}#{i}", start=a, end=b, clip=f"c:{clip}")
            for i, (a, b) in enumerate(spans)]


def test_clip_scores_average_segments_by_duration_and_baselines_leave_the_clip_out():
    items = _segments("a", [(0.0, 1.0), (1.0, 4.0)], label="neutral") + _segments("b", [(0.0, 2.0)], label="neutral")
    m = Manifest(items)
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    points = np.array([[0.4, 0.0], [0.0, 0.4], [0.2, 0.2]])
    clips, p, q = clip_level(m, probs, points)
    assert [c.key for c in clips] == ["c:a", "c:b"] and not clips[0].is_segment
    np.testing.assert_allclose(p[0], [0.25, 0.75])
    np.testing.assert_allclose(q[0], [0.1, 0.3])
    assert lean(q, clips.labels)["neutral_v"] == pytest.approx(0.15)
    X = np.array([[1.0], [3.0], [10.0]])
    bases = loo_baselines(X, m.labels, m.speakers, clips=m.clips)
    assert bases[0].mean == bases[1].mean == pytest.approx([10.0])  # clip a's segments never enrol themselves
    assert bases[2].mean == pytest.approx([2.0])
    assert bases[0].composition == {"neutral": 1.0}
    assert math.isnan(Item("x.wav", "sad", "s", "c").start)


def _tiny_whisper(folder: Path) -> Path:
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                           num_mel_bins=80, max_source_positions=1500, vocab_size=64, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    torch.manual_seed(0)
    WhisperEncoder(config).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_whisper_build_on_segments_gives_a_bundle_whose_runtime_features_are_the_training_ones(tmp_path):
    from monitor.model.bundle import load_bundle
    from training.__main__ import main
    from training.features import extract, make_featurizer
    from training.segments import segment_manifest

    clips = sorted((corpus_dir("ravdess") / "Actor_05").glob("*.wav"))
    rows = [f"{p},{p.stem.split('-')[2]},s{i % 4},{'val' if i % 4 == 3 else 'train'}" for i, p in enumerate(clips)]
    codes = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fear", "07": "disgust",
             "08": "surprise"}
    rows = [r.replace(f",{c},", f",{codes[c]},") for r in rows for c in [r.split(",")[1]]]
    (tmp_path / "clips.csv").write_text("path,label,speaker,split\n" + "\n".join(rows) + "\n")
    source = _tiny_whisper(tmp_path / "tiny-whisper")
    out = tmp_path / "bundle"
    rc = main(["build", "--backbone", "whisper", "--whisper-source", str(source), "--corpora",
               f"csv={tmp_path / 'clips.csv'}", "--epochs", "3", "--augment", "gain", "--balance", "centred",
               "--cache", str(tmp_path / "cache"), "--out", str(out), "--reducer-fast-neighbors", "5"])
    assert rc == 0
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["backbone"]["kind"] == "whisper" and meta["provenance"]["config"]["units"] == "segments"
    weights = meta["provenance"]["config"]["layer_weights"]
    bundle = load_bundle(out)
    model = bundle.build_model(device="cpu")
    np.testing.assert_allclose(model.backbone.layer_weights().detach().numpy(), weights, atol=1e-4)
    # one training segment: the cached training features, mixed, equal the live model's backbone features
    from monitor.audio.segmenter import segment_file
    from training.corpora import read_csv_manifest

    segs = segment_manifest(read_csv_manifest(tmp_path / "clips.csv", check_audio=False)[:2], progress=False)
    featurizer = make_featurizer(backbone="whisper", whisper_source=str(source))
    table = extract(segs, featurizer, cache=None, progress=False)
    layers = torch.tensor(table.X.reshape(len(segs), 3, 32))
    trained = model.backbone.mix(layers).detach().numpy()
    live = segment_file(segs[0].path)
    runtime = model.backbone_features([live[0].audio]).numpy()
    np.testing.assert_allclose(runtime[0], trained[0], rtol=1e-4, atol=1e-4)
    emb, probs = model.embed_waveforms([s.audio for s in live])
    assert emb.shape == (len(live), 100) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
