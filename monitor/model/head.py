"""The Stage I head: [optional MLP encoder ->] the 100-d bottleneck (the emotion embedding) -> classes."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn


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

    ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU}
    temperature: torch.Tensor  # a buffer

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

    def config(self) -> dict[str, Any]:
        """The constructor's arguments, as a bundle's ``head`` section stores them (``EmotionHead(**config)``)."""
        dropout = self.dropout.p if isinstance(self.dropout, nn.Dropout) else 0.0
        config: dict[str, Any] = {"input_dim": int(self.input_dim), "n_classes": int(self.n_classes),
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
