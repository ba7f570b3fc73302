"""The Whisper backbone: offline weights through the converter (checked against CTranslate2), every load route,
the sliced input, batching, and bundles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from monitor.model import whisper as W
from monitor.model.base import BackboneLoadError
from monitor.model.ct2_whisper import ConversionError, check_against_ctranslate2, read_model_bin
from tests.conftest import corpus_dir


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    """A private data folder: the package weights are converted into it once for this module."""
    return tmp_path_factory.mktemp("whisper_weights")


@pytest.fixture(scope="module")
def package_backbone(weights_dir) -> W.WhisperBackbone:
    return W.WhisperBackbone.from_pretrained("package:whisper-base", cache_dir=weights_dir)


def _ct2_folder(tmp_path: Path) -> Path:
    """The two installed parts reassembled into a CTranslate2 folder (what CTranslate2 itself loads)."""
    weights = W.PACKAGED["whisper-base"]
    parts = [W._package_file(m, f) for m, f in weights.parts]
    tmp_path.mkdir(parents=True, exist_ok=True)
    with open(tmp_path / "model.bin", "wb") as out:
        for part in parts:
            out.write(part.read_bytes())
    for extra in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (tmp_path / extra).write_bytes((parts[0].parent / extra).read_bytes())
    return tmp_path


def test_offline_weights_convert_exactly_and_match_ctranslate2_on_a_real_clip(package_backbone, weights_dir,
                                                                               tmp_path):
    """The converter's output against CTranslate2's own encoder on real speech: |diff| <= 1e-3 (values reach ~25)."""
    clip = corpus_dir("ravdess") / "Actor_01" / "03-01-05-02-01-01-01.wav"
    wave, rate = sf.read(clip, dtype="float32")
    assert rate == 16_000
    extractor = package_backbone.extractor
    mel = np.asarray(extractor(wave, sampling_rate=16_000, return_tensors="np").input_features[0], np.float32)
    worst = check_against_ctranslate2(_ct2_folder(tmp_path), package_backbone.encoder, mel, atol=1e-3)
    assert worst <= 1e-3
    # the cache records both hashes, and the source hash is the recorded one
    record = json.loads(next(weights_dir.glob("whisper-*/SOURCE.json")).read_text())
    assert record["source_sha256"] == W.PACKAGED["whisper-base"].sha256
    assert package_backbone.spec()["weights_sha256"] == W.PACKAGED["whisper-base"].sha256
    # every encoder tensor of the file was used, the fused key bias was zero
    model = read_model_bin(tmp_path / "model.bin")
    assert model.binary_version == 6 and model.spec == "WhisperSpec"


def test_a_wrong_hash_is_a_clear_error_never_a_fallback(monkeypatch, tmp_path):
    wrong = W.PackagedWeights(W.PACKAGED["whisper-base"].parts, "0" * 64, "test")
    monkeypatch.setitem(W.PACKAGED, "whisper-base", wrong)
    with pytest.raises(BackboneLoadError, match="sha256 .* not the recorded 0000"):
        W.WhisperBackbone.from_pretrained("package:whisper-base", cache_dir=tmp_path)
    assert not list(tmp_path.glob("whisper-*"))  # nothing was converted or cached
    with pytest.raises(BackboneLoadError, match="unknown packaged weights"):
        W.load_encoder("package:whisper-huge", cache_dir=tmp_path)


def test_a_damaged_cache_is_converted_again(package_backbone, weights_dir, caplog):
    folder = next(weights_dir.glob("whisper-*"))
    blob = folder / "model.safetensors"
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        again = W.WhisperBackbone.from_pretrained("package:whisper-base", cache_dir=weights_dir)
    assert "damaged" in caplog.text
    for (name, a), b in zip(package_backbone.encoder.state_dict().items(), again.encoder.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


def test_sliced_input_batches_like_single_segments_and_pools_only_real_audio(package_backbone):
    rng = np.random.default_rng(0)
    waves = [(0.05 * rng.standard_normal(n)).astype(np.float32) for n in (8_000, 27_123, 48_000)]
    batch = package_backbone.layer_features(waves)
    single = torch.cat([package_backbone.layer_features([w]) for w in waves])
    assert batch.shape == (3, 7, 512)
    torch.testing.assert_close(batch, single, atol=2e-4, rtol=1e-4)
    # the mixed feature is the softmax-weighted, standardised sum of the layers
    with torch.no_grad():
        package_backbone.layer_logits.copy_(torch.linspace(-1, 1, 7))
        package_backbone.layer_mean.fill_(0.5)
        package_backbone.layer_scale.fill_(2.0)
    mixed = package_backbone.features(waves[:1])
    expected = torch.einsum("l,lh->h", torch.softmax(torch.linspace(-1, 1, 7), 0), (single[0] - 0.5) / 2.0)
    torch.testing.assert_close(mixed[0], expected, atol=1e-5, rtol=1e-5)
    # the first 2n mel frames are Whisper's own (the 30 s window's), however long the segment
    mel = package_backbone.mel(waves[1])
    padded = package_backbone.extractor(waves[1], sampling_rate=16_000, return_tensors="np").input_features[0]
    assert mel.shape == (80, 2 * W.encoder_frames(len(waves[1])))
    np.testing.assert_allclose(mel, padded[:, : mel.shape[1]], atol=1e-5)


def _tiny_whisper(folder: Path, encoder_only: bool) -> Path:
    from transformers import WhisperConfig, WhisperModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                           decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=80,
                           max_source_positions=1500, vocab_size=64, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2, decoder_start_token_id=1)
    torch.manual_seed(0)
    model = WhisperEncoder(config) if encoder_only else WhisperModel(config)
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("encoder_only", [False, True])
def test_transformers_checkpoints_load_from_a_folder(tmp_path, encoder_only):
    folder = _tiny_whisper(tmp_path / "tiny", encoder_only)
    backbone = W.WhisperBackbone.from_pretrained(folder)
    assert backbone.num_layers == 3 and backbone.feature_dim == 32 and backbone.spec()["weights_sha256"] is None
    assert backbone.features([np.zeros(16_000, np.float32)]).shape == (1, 32)


def test_a_hub_id_loads_from_the_hugging_face_cache_offline(tmp_path, monkeypatch):
    """``openai/whisper-…``-style ids go through from_pretrained; here a cache folder holds the repo."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny-whisper" / "snapshots" / ("a" * 40)
    _tiny_whisper(snapshot, encoder_only=False)
    (cache / "models--someone--tiny-whisper" / "refs").mkdir(parents=True)
    (cache / "models--someone--tiny-whisper" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    backbone = W.WhisperBackbone.from_pretrained("someone/tiny-whisper")
    assert backbone.feature_dim == 32
    with pytest.raises(BackboneLoadError):
        W.WhisperBackbone.from_pretrained("someone/not-cached-anywhere")


def test_a_ctranslate2_folder_converts_and_caches(tmp_path, package_backbone):
    folder = _ct2_folder(tmp_path / "ct2")
    cache = tmp_path / "cache"
    backbone = W.WhisperBackbone.from_pretrained(folder, cache_dir=cache)
    assert backbone.spec()["weights_sha256"] == W.PACKAGED["whisper-base"].sha256
    assert (cache / f"whisper-{W.PACKAGED['whisper-base'].sha256[:16]}" / "model.safetensors").is_file()
    truncated = tmp_path / "bad"
    truncated.mkdir()
    (truncated / "model.bin").write_bytes((folder / "model.bin").read_bytes()[:1000])
    with pytest.raises(BackboneLoadError, match="ends early|cut off|malformed"):
        W.WhisperBackbone.from_pretrained(truncated, cache_dir=cache)


def test_not_whisper_is_refused(tmp_path):
    with pytest.raises(ConversionError):
        read_model_bin(_bogus(tmp_path))


def _bogus(tmp_path: Path) -> Path:
    path = tmp_path / "model.bin"
    path.write_bytes(b"\x01\x00\x00\x00" + b"\x00" * 16)
    return path


def test_a_whisper_bundle_round_trips_its_layer_weights_and_statistics(tmp_path):
    from calibration.anchors import anchors_for
    from calibration.speaker import FeatureNormalizer
    from monitor.model.bundle import ModelBundle, load_bundle
    from monitor.model.emotion import EmotionModel
    from monitor.model.head import EmotionHead
    from tests.bundles import LABELS, synthetic_reducer

    backbone = W.WhisperBackbone.from_pretrained(_tiny_whisper(tmp_path / "tiny", encoder_only=True))
    with torch.no_grad():
        backbone.layer_logits.copy_(torch.tensor([0.3, -0.2, 0.9]))
        backbone.layer_mean.normal_(0, 0.1)
        backbone.layer_scale.uniform_(0.5, 2.0)
    torch.manual_seed(0)
    model = EmotionModel(backbone, EmotionHead(32, len(LABELS)), FeatureNormalizer("none"), LABELS).eval()
    bundle = ModelBundle.from_model(model, synthetic_reducer(), anchors_for(LABELS), name="tiny-whisper")
    bundle.save(tmp_path / "bundle")
    loaded = load_bundle(tmp_path / "bundle")
    assert loaded.backbone["kind"] == "whisper" and loaded.backbone["input"] == "sliced"
    again = loaded.build_model(device="cpu")
    waves = [np.random.default_rng(1).standard_normal(20_000).astype(np.float32) * 0.05]
    np.testing.assert_allclose(again.embed_waveforms(waves)[0], model.embed_waveforms(waves)[0], rtol=1e-5, atol=1e-6)
    # a bundle whose layer statistics do not fit the encoder is refused with a clear error
    state = dict(loaded.head_state)
    state["backbone.layer_mean"] = torch.zeros(2, 32)
    loaded.head_state = state
    from monitor.model.bundle import BundleError

    with pytest.raises(BundleError, match="layer_mean"):
        loaded.build_model(device="cpu")
