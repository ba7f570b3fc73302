"""The Stage I emotion model: backbone features -> normalisation -> 100-d bottleneck -> classes.

The 100-d bottleneck is the emotion embedding that Stage II places on the
circumplex; the classifier's probabilities give the point its confidence and
top classes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from calibration.speaker import FeatureNormalizer, SpeakerBaseline
from monitor.model.base import Backbone
from monitor.model.head import EmotionHead


def choose_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA when a GPU is visible, else the CPU; an explicit CUDA request without one fails clearly."""
    if requested in ("auto", "", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {requested!r} was asked for, but no CUDA GPU is available; use --device cpu or auto")
    return device


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """Mixed precision on GPUs (bf16 where supported, else fp16); full fp32 on the CPU unless asked."""
    if precision in ("fp32", "int8"):
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise ValueError(f"precision must be auto, fp32, bf16, fp16 or int8, got {precision!r}")
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class EmotionModel(nn.Module):
    """Backbone, normaliser and head together: waveforms in, (embeddings, probabilities) out."""

    def __init__(self, backbone: Backbone, head: EmotionHead, normalizer: FeatureNormalizer,
                 labels: Sequence[str], precision: str = "auto"):
        super().__init__()
        if head.n_classes != len(labels):
            raise ValueError(f"head has {head.n_classes} classes but {len(labels)} labels were given")
        if head.input_dim != backbone.feature_dim:
            raise ValueError(f"head expects {head.input_dim} features, backbone gives {backbone.feature_dim}")
        self.backbone = backbone
        self.head = head
        self.normalizer = normalizer
        self.labels = tuple(labels)
        self.precision = precision

    @property
    def device(self) -> torch.device:
        return next(self.head.parameters()).device

    def embed_features(self, features: np.ndarray | torch.Tensor,
                       baseline: SpeakerBaseline | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Head on precomputed backbone features [B, D] -> (embeddings [B, 100], probabilities [B, C])."""
        feats = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
        x = torch.as_tensor(self.normalizer.apply(feats, baseline), device=self.device)
        with torch.inference_mode():
            # One row at a time: a matrix product's rounding depends on how many rows it has, and a segment's
            # point must not depend on which other segments shared its batch (the live worker batches whatever
            # is waiting; the researcher's API batches across files). The head is tiny; the cost is negligible.
            outputs = [self.head(x[i:i + 1]) for i in range(x.shape[0])] if x.shape[0] > 1 else [self.head(x)]
            embedding = torch.cat([e for e, _ in outputs])
            probs = self.head.probabilities(torch.cat([logits for _, logits in outputs]))
        return embedding.float().cpu().numpy(), probs.cpu().numpy()

    def backbone_features(self, waves: Sequence[np.ndarray]) -> torch.Tensor:
        """Pooled backbone features, under mixed precision on a GPU."""
        dtype = autocast_dtype(self.device, self.precision)
        with torch.inference_mode():
            if dtype is None:
                return self.backbone.features(waves).float()
            with torch.autocast(device_type=self.device.type, dtype=dtype):
                return self.backbone.features(waves).float()

    def embed_waveforms(self, waves: Sequence[np.ndarray],
                        baseline: SpeakerBaseline | None = None) -> tuple[np.ndarray, np.ndarray]:
        """16 kHz float32 waveforms -> (embeddings [B, 100], probabilities [B, C])."""
        return self.embed_features(self.backbone_features(waves), baseline)
