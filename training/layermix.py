"""Learnable weights over an encoder's hidden layers, fitted on cached per-layer features.

The method weights every hidden layer of the speech encoder with a learnt
softmax weight. With a frozen encoder the pooled features of each layer can
be cached once (``[segments, layers, d_model]``), because mean pooling and a
weighted sum commute: ``sum_l w_l mean_t h_l = mean_t sum_l w_l h_l``. So the
weights are fitted here on the cache, with every layer first standardised by
its training mean and spread (layers differ in scale by an order of
magnitude; unstandardised, the loudest layer would win whatever it knew).

Fitting: the softmax weights and a linear classifier over the mixed feature,
trained together with class-balanced cross-entropy (full batch, Adam). The
classifier is thrown away; the weights and statistics go into the backbone
(``WhisperBackbone.layer_logits``, ``layer_mean``, ``layer_scale``), and the
head of the bundle is then trained on the mixed features like any other.
``mode="mean"`` keeps equal weights (the ablation baseline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from training.sampling import sample_weights

MIX_MODES = ("learn", "mean")


@dataclass
class LayerMix:
    """Per-layer statistics and softmax layer weights: ``[n, layers, d] -> [n, d]``."""

    mean: np.ndarray  # [layers, d]
    scale: np.ndarray  # [layers, d]
    logits: np.ndarray  # [layers]

    @property
    def weights(self) -> np.ndarray:
        e = np.exp(self.logits - self.logits.max())
        return np.asarray(e / e.sum(), dtype=np.float64)

    def transform(self, layers: np.ndarray) -> np.ndarray:
        """Mixed features [n, d] of per-layer features [n, layers, d] (the runtime backbone computes the same)."""
        z = (np.asarray(layers, dtype=np.float64) - self.mean) / self.scale
        return np.asarray(np.einsum("l,nld->nd", self.weights, z), dtype=np.float64)

    def backbone_state(self) -> dict[str, torch.Tensor]:
        """The tensors ``WhisperBackbone.load_bundle_state`` takes."""
        return {"backbone.layer_logits": torch.tensor(self.logits, dtype=torch.float32),
                "backbone.layer_mean": torch.tensor(self.mean, dtype=torch.float32),
                "backbone.layer_scale": torch.tensor(self.scale, dtype=torch.float32)}

    def summary(self) -> dict[str, list[float]]:
        return {"layer_weights": [round(float(w), 4) for w in self.weights]}


def fit_layer_mix(layers: np.ndarray, labels: Sequence[str], corpora: Sequence[str] | None = None,
                  mode: str = "learn", balance: str = "corpus+class", steps: int = 300, weight_decay: float = 1e-3,
                  seed: int = 0) -> LayerMix:
    """Statistics and layer weights from training features ``[n, layers, d]`` with their labels."""
    if mode not in MIX_MODES:
        raise ValueError(f"layer mix must be one of {MIX_MODES}, got {mode!r}")
    x = np.asarray(layers, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"per-layer features must be [n, layers, d], got shape {x.shape}")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    logits = np.zeros(x.shape[1])
    if mode == "learn":
        logits = _learn_logits((x - mean) / scale, labels, corpora, balance, steps, weight_decay, seed)
    return LayerMix(mean=mean, scale=scale, logits=logits)


def _learn_logits(z: np.ndarray, labels: Sequence[str], corpora: Sequence[str] | None, balance: str, steps: int,
                  weight_decay: float, seed: int) -> np.ndarray:
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(c) for c in labels])
    w = torch.tensor(sample_weights(list(labels), corpora, balance), dtype=torch.float32)
    w = w / w.sum()
    generator = torch.Generator().manual_seed(seed)
    data = torch.tensor(z, dtype=torch.float32)
    logits = torch.zeros(z.shape[1], requires_grad=True)
    linear = torch.nn.Linear(z.shape[2], len(classes))
    with torch.no_grad():
        linear.weight.normal_(0.0, 0.01, generator=generator)
        linear.bias.zero_()
    groups: list[dict[str, Any]] = [{"params": [logits]},
                                    {"params": list(linear.parameters()), "weight_decay": weight_decay}]
    optimizer = torch.optim.Adam(groups, lr=0.02)
    for _ in range(steps):
        optimizer.zero_grad()
        mixed = torch.einsum("l,nld->nd", torch.softmax(logits, dim=0), data)
        loss = (torch.nn.functional.cross_entropy(linear(mixed), y, reduction="none") * w).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    return np.asarray(logits.detach().numpy(), dtype=np.float64)
