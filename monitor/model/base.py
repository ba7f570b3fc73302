"""The interface every speech backbone implements: 16 kHz waveforms in, one pooled feature vector per segment out."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn


class BackboneLoadError(RuntimeError):
    """The backbone's weights could not be found or read; the message names the path or hub id."""


class Backbone(nn.Module):
    """Turns a list of 16 kHz float32 waveforms into a [batch, feature_dim] tensor."""

    kind: str = ""
    feature_dim: int = 0

    def features(self, waves: Sequence[np.ndarray]) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:  # pragma: no cover - interface
        """JSON description stored in the model bundle; ``build_backbone`` reverses it."""
        raise NotImplementedError

    def bundle_state(self) -> dict[str, torch.Tensor]:
        """Tensors the bundle keeps beside the head (``backbone.*``): what training learnt in the backbone."""
        return {}

    def load_bundle_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`bundle_state` from a bundle's tensors; raises ``BackboneLoadError`` when they don't fit."""

    @property
    def device(self) -> torch.device:
        for parameter in self.parameters():
            return parameter.device
        for buffer in self.buffers():
            return buffer.device
        return torch.device("cpu")
