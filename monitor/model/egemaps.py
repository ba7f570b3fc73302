"""openSMILE functionals as a backbone: the offline default that needs no downloaded weights.

This is the one openSMILE wrapper of the project: training extracts its
features through it too, so training and the live monitor compute them with
the same code.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from monitor.model.audio_format import SAMPLE_RATE
from monitor.model.base import Backbone


class EgemapsBackbone(Backbone):
    """openSMILE functionals over each segment (eGeMAPSv02: 88 values; ComParE_2016: 6373).

    Runs on the CPU whatever the device; the tensor it returns is moved to the
    device of the module (so the head can sit on a GPU).
    """

    kind = "egemaps"
    FEATURE_SETS = ("eGeMAPSv02", "ComParE_2016")

    def __init__(self, feature_set: str = "eGeMAPSv02"):
        super().__init__()
        if feature_set not in self.FEATURE_SETS:
            raise ValueError(f"unknown openSMILE feature set {feature_set!r}; choose from {self.FEATURE_SETS}")
        import opensmile  # imported here: heavy, and only this backbone needs it

        self.feature_set = feature_set
        self._smile = opensmile.Smile(
            feature_set=getattr(opensmile.FeatureSet, feature_set),
            feature_level=opensmile.FeatureLevel.Functionals,
        )
        self.feature_names = list(self._smile.feature_names)
        self.feature_dim = len(self.feature_names)
        self.register_buffer("_device_marker", torch.zeros(0), persistent=False)

    def extract(self, wave: np.ndarray) -> np.ndarray:
        """Functionals of one waveform as float64 [feature_dim]."""
        wave = np.ascontiguousarray(wave, dtype=np.float32)
        values = self._smile.process_signal(wave, SAMPLE_RATE).to_numpy(dtype=np.float64)[0]
        # openSMILE yields NaN for some functionals on very short or unvoiced input.
        cleaned: np.ndarray = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        return cleaned

    def features(self, waves: Sequence[np.ndarray]) -> torch.Tensor:
        rows = np.stack([self.extract(w) for w in waves]) if len(waves) else np.zeros((0, self.feature_dim))
        return torch.as_tensor(rows, dtype=torch.float32, device=self.device)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "feature_set": self.feature_set, "feature_dim": self.feature_dim}
