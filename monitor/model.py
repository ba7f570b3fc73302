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
from monitor.backbones import Backbone


def choose_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA when a GPU is visible, else the CPU; an explicit CUDA request without one fails clearly."""
    if requested in ("auto", "", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} was asked for, but no CUDA GPU is available; use --device cpu or auto")
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


class EmotionHead(nn.Module):
    """[optional MLP encoder ->] Linear(-> 100) bottleneck, then Linear(100 -> classes).

    With ``hidden_dims=()`` (the default, and every bundle written before the
    field existed) the head is ``Linear(d -> 100) -> Linear(100 -> C)``: the
    embedding is then a *linear* map of the normalised features, so every
    direction of feature space that the classifier ignores (speaker, channel,
    sentence) is still in it at full strength, and Stage II's nearest-neighbour
    placement has to see through it. ``hidden_dims=(256,)`` puts a small
    nonlinear encoder in front (``Linear(d -> 256) -> GELU -> Dropout``), so the
    100-d bottleneck only keeps what the classes need; on hand-crafted
    functionals such as eGeMAPS (88 values) that is where the head's capacity
    was missing. The bottleneck is still linear and still the embedding.

    ``dropout`` is applied to the input features and after every hidden layer.
    ``temperature`` divides the logits at inference; training sets it by
    calibration on held-out data so probabilities mean what they say.
    """

    ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}

    def __init__(self, input_dim: int, n_classes: int, embedding_dim: int = 100, dropout: float = 0.0,
                 hidden_dims: Sequence[int] = (), activation: str = "gelu"):
        super().__init__()
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(self.ACTIVATIONS)}, got {activation!r}")
        self.input_dim = input_dim
        self.n_classes = n_classes
        self.embedding_dim = embedding_dim
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        self.activation = activation
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        width = input_dim
        if self.hidden_dims:  # only then: heads without hidden layers keep their old state-dict keys
            layers: list[nn.Module] = []
            for h in self.hidden_dims:
                layers += [nn.Linear(width, h), self.ACTIVATIONS[activation]()]
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
                width = h
            self.encoder = nn.Sequential(*layers)
        self.bottleneck = nn.Linear(width, embedding_dim)
        self.classifier = nn.Linear(embedding_dim, n_classes)
        self.register_buffer("temperature", torch.ones(()))

    def config(self) -> dict:
        """The constructor's arguments, as a bundle's ``head`` section stores them (``EmotionHead(**config)``)."""
        dropout = self.dropout.p if isinstance(self.dropout, nn.Dropout) else 0.0
        config = {"input_dim": int(self.input_dim), "n_classes": int(self.n_classes),
                  "embedding_dim": int(self.embedding_dim), "dropout": float(dropout)}
        if self.hidden_dims:  # heads without an encoder keep the section older bundles had
            config.update(hidden_dims=list(self.hidden_dims), activation=self.activation)
        return config

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.dropout(features)
        if self.hidden_dims:
            x = self.encoder(x)
        embedding = self.bottleneck(x)
        return embedding, self.classifier(embedding)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float() / self.temperature.clamp(min=1e-3), dim=-1)


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

    @classmethod
    def from_bundle(cls, bundle, device: str = "auto", precision: str = "auto") -> "EmotionModel":
        """Build the runtime model from a ``monitor.bundle.ModelBundle`` (or a bundle folder)."""
        from monitor.bundle import ModelBundle, load_bundle

        if not isinstance(bundle, ModelBundle):
            bundle = load_bundle(bundle)
        model = bundle.build_model(precision=precision)
        target = choose_device(device)
        if precision == "int8":
            if target.type != "cpu":
                raise ValueError("int8 precision is for CPU inference; use auto, bf16 or fp16 on a GPU")
            quantize = getattr(model.backbone, "quantize_int8", None)
            if quantize is not None:
                quantize()
        return model.to(target).eval()

    def embed_features(self, features: np.ndarray | torch.Tensor,
                       baseline: SpeakerBaseline | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Head on precomputed backbone features [B, D] -> (embeddings [B, 100], probabilities [B, C])."""
        feats = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
        x = torch.as_tensor(self.normalizer.apply(feats, baseline), device=self.device)
        with torch.inference_mode():
            embedding, logits = self.head(x)
            probs = self.head.probabilities(logits)
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
