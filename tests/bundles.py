"""Test model bundles: a tiny random WavLM, or eGeMAPS, with a reducer fitted on synthetic clusters.

The weights are random, so the points mean nothing; the bundles exercise the
exact code paths a real bundle takes (save_pretrained -> from_pretrained,
safetensors, npz) in a fraction of a second of compute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from calibration.anchors import anchors_for
from calibration.speaker import FeatureNormalizer
from monitor.model.egemaps import EgemapsBackbone
from monitor.model.wavlm import WavLMBackbone
from monitor.model.bundle import ModelBundle
from monitor.model.head import EmotionHead
from monitor.model.emotion import EmotionModel

LABELS = ("neutral", "happy", "sad", "angry")


def tiny_wavlm_config():
    from transformers import WavLMConfig

    return WavLMConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32, 32, 32), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, num_buckets=32, max_bucket_distance=100,
        feat_extract_norm="group", do_stable_layer_norm=False,
    )


def tiny_wavlm_model(seed: int = 0):
    from transformers import WavLMModel

    torch.manual_seed(seed)
    return WavLMModel(tiny_wavlm_config()).eval()


def synthetic_reducer(labels=LABELS, dim: int = 100, seed: int = 0, n_per_class: int = 40):
    from calibration.reducer import AnchoredReducer

    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(len(labels), dim))
    X = np.concatenate([c + rng.normal(0, 1, size=(n_per_class, dim)) for c in centres]).astype(np.float32)
    y = np.repeat(np.asarray(labels), n_per_class)
    return AnchoredReducer(anchors=anchors_for(labels), n_epochs=30, random_state=seed).fit(X, y)


def build_model(backbone, labels=LABELS, seed: int = 0) -> EmotionModel:
    torch.manual_seed(seed)
    head = EmotionHead(backbone.feature_dim, len(labels))
    return EmotionModel(backbone, head, FeatureNormalizer("none"), labels).eval()


def tiny_wavlm_bundle(folder: Path, seed: int = 0) -> Path:
    """A bundle whose backbone is a tiny WavLM saved inside it with save_pretrained."""
    backbone = WavLMBackbone(tiny_wavlm_model(seed), normalize_waveform=True, source="tiny-test-wavlm")
    with torch.no_grad():
        backbone.layer_logits.copy_(torch.linspace(-1, 1, backbone.num_layers))
    model = build_model(backbone, seed=seed)
    bundle = ModelBundle.from_model(model, synthetic_reducer(seed=seed), anchors_for(LABELS), name="tiny-wavlm",
                                    version="test", embed_backbone=True, provenance={"purpose": "tests"})
    bundle.save(folder)
    return Path(folder)


def egemaps_bundle(folder: Path, seed: int = 0) -> Path:
    """An eGeMAPS bundle with a random head and population normalisation from random stats."""
    backbone = EgemapsBackbone()
    model = build_model(backbone, seed=seed)
    rng = np.random.default_rng(seed)
    model.normalizer = FeatureNormalizer("population").fit(rng.normal(size=(50, backbone.feature_dim)))
    bundle = ModelBundle.from_model(model, synthetic_reducer(seed=seed), anchors_for(LABELS), name="test-egemaps",
                                    version="test")
    bundle.save(folder)
    return Path(folder)
