"""Backbones, the emotion model and the bundle format, through the same code paths real weights take."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from monitor.model.base import BackboneLoadError
from monitor.model.egemaps import EgemapsBackbone
from monitor.model.wavlm import WavLMBackbone
from monitor.model.backbones import build_backbone
from monitor.model.bundle import BundleError, load_bundle
from monitor.model.emotion import EmotionModel, autocast_dtype, choose_device
from tests.bundles import tiny_wavlm_config, tiny_wavlm_model
from tests.synth import voiced


@pytest.fixture()
def saved_wavlm(tmp_path):
    """A tiny WavLM written with save_pretrained, as a hub download or a user's folder would be."""
    folder = tmp_path / "wavlm"
    tiny_wavlm_model().save_pretrained(folder)
    return folder


def test_from_pretrained_local_folder_round_trip(saved_wavlm):
    original = tiny_wavlm_model()
    backbone = WavLMBackbone.from_pretrained(saved_wavlm)
    for name, tensor in original.state_dict().items():
        torch.testing.assert_close(backbone.encoder.state_dict()[name], tensor)
    assert backbone.num_layers == tiny_wavlm_config().num_hidden_layers + 1
    assert backbone.feature_dim == 32


def test_pooling_uses_the_models_own_frame_count(saved_wavlm):
    backbone = WavLMBackbone.from_pretrained(saved_wavlm).eval()
    wave = voiced(0.73)
    batch, lengths = backbone.prepare([wave])
    with torch.no_grad():
        hidden = backbone.encoder(batch, output_hidden_states=True).hidden_states
    frames = int(backbone.frame_lengths(lengths)[0])
    assert frames == hidden[0].shape[1]  # conv arithmetic, not a rounded constant like len/320
    weights = backbone.layer_weights()
    expected = sum(w * h[0].mean(dim=0) for w, h in zip(weights, hidden, strict=True))
    with torch.no_grad():
        torch.testing.assert_close(backbone.features([wave])[0], expected, rtol=1e-4, atol=1e-5)


def test_padded_batches_match_single_items_for_layer_norm_models():
    from transformers import WavLMModel

    config = tiny_wavlm_config()
    config.feat_extract_norm, config.do_stable_layer_norm = "layer", True
    torch.manual_seed(0)
    backbone = WavLMBackbone(WavLMModel(config).eval())
    assert backbone.pads_safely
    short, long = voiced(0.6, seed=1), voiced(1.4, seed=2)
    with torch.no_grad():
        together = backbone.features([short, long])
        alone = torch.cat([backbone.features([short]), backbone.features([long])])
    torch.testing.assert_close(together, alone, rtol=1e-3, atol=1e-4)


def test_group_norm_models_never_mix_lengths_in_a_batch(saved_wavlm):
    backbone = WavLMBackbone.from_pretrained(saved_wavlm).eval()
    assert not backbone.pads_safely
    waves = [voiced(0.6, seed=1), voiced(1.4, seed=2), voiced(0.6, seed=3)]
    with torch.no_grad():
        together = backbone.features(waves)
        alone = torch.cat([backbone.features([w]) for w in waves])
        # training and export call forward_padded on padded batches directly: the same guard applies there
        batch, lengths = backbone.prepare(waves)
        padded = backbone.forward_padded(torch.nn.functional.pad(batch, (0, 800)), lengths)
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(padded, alone, rtol=1e-4, atol=1e-5)


def test_freezing_modes(saved_wavlm):
    frozen = WavLMBackbone.from_pretrained(saved_wavlm, finetune="frozen")
    assert not any(p.requires_grad for p in frozen.encoder.parameters())
    frozen.train()
    assert not frozen.encoder.training  # no dropout in a frozen encoder
    batch, lengths = frozen.prepare([voiced(0.5)])
    frozen.forward_padded(batch, lengths).sum().backward()
    assert frozen.layer_logits.grad is not None and frozen.layer_logits.grad.abs().sum() > 0

    partial = WavLMBackbone.from_pretrained(saved_wavlm, finetune="transformer")
    cnn = list(partial.encoder.feature_extractor.parameters())
    assert cnn and not any(p.requires_grad for p in cnn)
    assert any(p.requires_grad for p in partial.encoder.encoder.parameters())


def test_missing_and_corrupt_weights_name_the_path(tmp_path, saved_wavlm, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneLoadError, match=str(tmp_path / "nowhere")):
        WavLMBackbone.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(BackboneLoadError, match="nobody/no-such-wavlm"):
        WavLMBackbone.from_pretrained("nobody/no-such-wavlm")
    weights = next(saved_wavlm.glob("*.safetensors"))
    weights.write_bytes(b"\x00" * 100)
    with pytest.raises(BackboneLoadError, match="wavlm"):
        WavLMBackbone.from_pretrained(saved_wavlm)


def test_bundle_round_trip_gives_identical_outputs(tiny_bundle, tmp_path):
    bundle = load_bundle(tiny_bundle)
    model = bundle.build_model(device="cpu")
    waves = [voiced(1.0, seed=4), voiced(2.2, seed=5)]
    emb, probs = model.embed_waveforms(waves)
    assert emb.shape == (2, 100) and probs.shape == (2, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)

    copy = tmp_path / "copy"
    bundle.save(copy)  # re-save from a loaded bundle (backbone folder is carried over)
    again = load_bundle(copy)
    emb2, probs2 = again.build_model(device="cpu").embed_waveforms(waves)
    np.testing.assert_array_equal(emb, emb2)
    np.testing.assert_array_equal(probs, probs2)
    np.testing.assert_array_equal(bundle.reducer.transform(emb), again.reducer.transform(emb))
    assert again.model_id == bundle.model_id
    meta = json.loads((copy / "bundle.json").read_text())
    assert meta["format"] == "mood-monitor-bundle" and meta["backbone"]["source"] == "bundle:backbone"
    assert meta["labels"] == ["neutral", "happy", "sad", "angry"]


def test_model_id_changes_with_anything_that_moves_a_point(tmp_path):
    """A stored point names its model_id; a re-fitted reducer or new normalisation must not share it."""
    import dataclasses

    from calibration.speaker import FeatureNormalizer
    from monitor.model.bundle import ModelBundle
    from monitor.model.head import EmotionHead
    from tests.bundles import LABELS, anchors_for, synthetic_reducer

    backbone = EgemapsBackbone()
    torch.manual_seed(0)
    head = EmotionHead(backbone.feature_dim, len(LABELS), dropout=0.1, hidden_dims=(16,))
    rng = np.random.default_rng(0)
    normalizer = FeatureNormalizer("population").fit(rng.normal(size=(50, backbone.feature_dim)))
    model = EmotionModel(backbone, head, normalizer, LABELS).eval()
    bundle = ModelBundle.from_model(model, synthetic_reducer(seed=0), anchors_for(LABELS), name="m", version="1")
    assert bundle.head_config == {"input_dim": 88, "n_classes": 4, "embedding_dim": 100, "dropout": 0.1,
                                  "hidden_dims": [16], "activation": "gelu"}
    bundle.save(tmp_path / "b")
    loaded = load_bundle(tmp_path / "b")
    assert loaded.model_id == bundle.model_id  # a round trip keeps it
    x = rng.normal(size=(3, 88)).astype(np.float32)
    np.testing.assert_array_equal(loaded.build_model(device="cpu").embed_features(x)[0],
                                  model.embed_features(x)[0])  # the encoder came back, not a linear head

    other_reducer = dataclasses.replace(bundle, reducer=synthetic_reducer(seed=1))
    other_norm = dataclasses.replace(bundle, normalizer=FeatureNormalizer("population").fit(
        rng.normal(size=(50, backbone.feature_dim))))
    ids = {bundle.model_id, other_reducer.model_id, other_norm.model_id}
    assert len(ids) == 3 and all(i.startswith("m@1+") for i in ids)


def test_bundle_json_is_strict_json_even_with_undefined_metrics(tiny_bundle, tmp_path):
    bundle = load_bundle(tiny_bundle)
    bundle.metrics = {"mood_ccc_valence_ratio": {"mean": float("nan"), "n": 3}, "range": [0.5, float("inf")]}
    bundle.save(tmp_path / "b")

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    meta = json.loads((tmp_path / "b" / "bundle.json").read_text(), parse_constant=refuse)
    assert meta["metrics"] == {"mood_ccc_valence_ratio": {"mean": None, "n": 3}, "range": [0.5, None]}


def test_bundle_errors_are_clear(tiny_bundle, tmp_path):
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BundleError, match="no bundle.json"):
        load_bundle(empty)

    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    (broken / "head.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(BundleError, match="head.safetensors"):
        load_bundle(broken)

    no_reducer = tmp_path / "no_reducer"
    shutil.copytree(tiny_bundle, no_reducer)
    (no_reducer / "reducer.npz").unlink()
    with pytest.raises(BundleError, match="reducer"):
        load_bundle(no_reducer)

    no_backbone = tmp_path / "no_backbone"
    shutil.copytree(tiny_bundle, no_backbone)
    shutil.rmtree(no_backbone / "backbone")
    with pytest.raises(BackboneLoadError, match="backbone folder is missing"):
        load_bundle(no_backbone).build_model()

    future = tmp_path / "future"
    shutil.copytree(tiny_bundle, future)
    meta = json.loads((future / "bundle.json").read_text())
    meta["format_version"] = 99
    (future / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="upgrade"):
        load_bundle(future)


def test_device_choice_and_mixed_precision_paths(tiny_bundle, monkeypatch):
    assert choose_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert choose_device("auto").type == "cpu"
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            choose_device("cuda")
    assert autocast_dtype(torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype(torch.device("cuda")) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(torch.device("cuda")) is torch.float16
    with pytest.raises(ValueError):
        autocast_dtype(torch.device("cpu"), "int4")
    # The autocast branch itself, run on the CPU in bf16: same answer as fp32 within bf16 precision.
    fp32 = load_bundle(tiny_bundle).build_model(device="cpu", precision="fp32")
    bf16 = load_bundle(tiny_bundle).build_model(device="cpu", precision="bf16")
    waves = [voiced(1.0)]
    e32, p32 = fp32.embed_waveforms(waves)
    e16, p16 = bf16.embed_waveforms(waves)
    assert e16.dtype == np.float32
    np.testing.assert_allclose(p16, p32, atol=0.05)
    assert np.corrcoef(e16[0], e32[0])[0, 1] > 0.99


def test_egemaps_backbone_on_real_clips(ravdess_clips):
    from monitor.audio.io import read_audio

    backbone = EgemapsBackbone()
    feats = backbone.features([read_audio(p) for p in ravdess_clips[:3]])
    assert feats.shape == (3, 88)
    assert torch.isfinite(feats).all()
    assert not torch.allclose(feats[0], feats[1])
    assert build_backbone(backbone.spec()).feature_dim == 88
    with pytest.raises(ValueError, match="feature set"):
        EgemapsBackbone("MFCC")


def test_int8_cpu_path_stays_close_to_fp32(tiny_bundle):
    fp32 = load_bundle(tiny_bundle).build_model(device="cpu", precision="fp32")
    int8 = load_bundle(tiny_bundle).build_model(device="cpu", precision="int8")
    quantized = [m for m in int8.backbone.encoder.modules() if "quantized" in type(m).__module__]
    assert quantized, "no layer was quantised"
    waves = [voiced(1.2, seed=7)]
    e32, p32 = fp32.embed_waveforms(waves)
    e8, p8 = int8.embed_waveforms(waves)
    assert np.corrcoef(e8[0], e32[0])[0, 1] > 0.98
    np.testing.assert_allclose(p8, p32, atol=0.05)
