"""Speaker calibration by enrolment, never by the monitored speech itself.

A patient's voice differs from the population's (pitch, timbre, loudness).
Re-centring each speaker on the mean of their own recent speech removes that,
but it also removes a mood that lasts: a patient who is sad for weeks would be
re-centred to neutral. So the only per-speaker statistic we use comes from an
explicit enrolment recording (calm reading or talk at intake): the speaker's
features are shifted so that their enrolment baseline lands on the population's
baseline (the mean of the training corpora's neutral/calm speech). Without an
enrolment, population statistics alone are used.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

NORMALIZATION_MODES = ("none", "population", "enrolment")
#: Emotions whose speech serves as a speaker's baseline in training corpora.
BASELINE_EMOTIONS = ("neutral", "calm")


@dataclass
class SpeakerBaseline:
    """The feature mean of one speaker's enrolment speech, for one model.

    ``model_id`` ties the baseline to the backbone that produced the features:
    a baseline from another model's feature space must not be applied.
    """

    mean: np.ndarray
    n_segments: int
    seconds: float
    model_id: str
    source: str = ""
    created: float = field(default_factory=time.time)

    def to_json(self) -> dict:
        return {
            "mean": [float(x) for x in np.asarray(self.mean, dtype=np.float64)],
            "n_segments": int(self.n_segments),
            "seconds": float(self.seconds),
            "model_id": self.model_id,
            "source": self.source,
            "created": float(self.created),
        }

    @classmethod
    def from_json(cls, data: dict) -> "SpeakerBaseline":
        return cls(
            mean=np.asarray(data["mean"], dtype=np.float64),
            n_segments=int(data["n_segments"]),
            seconds=float(data["seconds"]),
            model_id=str(data["model_id"]),
            source=str(data.get("source", "")),
            created=float(data.get("created", 0.0)),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "SpeakerBaseline":
        return cls.from_json(json.loads(Path(path).read_text()))


class FeatureNormalizer:
    """Population z-scoring of backbone features, with an optional enrolment shift.

    mode "none": features pass unchanged; "population": (x - mean) / scale;
    "enrolment": like population, after shifting an enrolled speaker by
    ``reference - baseline.mean`` (no shift without a baseline).
    """

    def __init__(self, mode: str = "population"):
        if mode not in NORMALIZATION_MODES:
            raise ValueError(f"normalization mode must be one of {NORMALIZATION_MODES}, got {mode!r}")
        self.mode = mode
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None
        self.reference_: np.ndarray | None = None

    # ---- fitting -----------------------------------------------------------------
    def fit(self, features: np.ndarray, labels: Sequence[str] | None = None) -> "FeatureNormalizer":
        """Population statistics from (already speaker-shifted) training features.

        ``reference_`` is the mean of the baseline emotions' features (neutral
        and calm) when labels are given and present, else the overall mean.
        """
        x = np.asarray(features, dtype=np.float64)
        self.mean_ = x.mean(axis=0)
        scale = x.std(axis=0)
        self.scale_ = np.where(scale > 1e-8, scale, 1.0)
        self.reference_ = self.mean_.copy()
        if labels is not None:
            is_baseline = np.isin(np.asarray(labels), BASELINE_EMOTIONS)
            if is_baseline.any():
                self.reference_ = x[is_baseline].mean(axis=0)
        return self

    def speaker_offset(self, baseline: SpeakerBaseline | np.ndarray | None) -> np.ndarray | None:
        """The shift that moves this speaker's baseline onto the population reference."""
        if self.mode != "enrolment" or baseline is None:
            return None
        mean = baseline.mean if isinstance(baseline, SpeakerBaseline) else np.asarray(baseline)
        return self.reference_ - mean

    # ---- applying ----------------------------------------------------------------
    def apply(self, features: np.ndarray, baseline: SpeakerBaseline | np.ndarray | None = None) -> np.ndarray:
        """Normalize a [n, d] feature array (float32 out)."""
        x = np.asarray(features, dtype=np.float64)
        if self.mode == "none":
            return x.astype(np.float32)
        if self.mean_ is None:
            raise RuntimeError("FeatureNormalizer is not fitted")
        offset = self.speaker_offset(baseline)
        if offset is not None:
            if offset.shape[-1] != x.shape[-1]:
                raise ValueError(f"speaker baseline has {offset.shape[-1]} features, the model has {x.shape[-1]}")
            x = x + offset
        return ((x - self.mean_) / self.scale_).astype(np.float32)

    # ---- persistence (JSON + arrays, no pickle) ------------------------------------
    def to_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        arrays = {}
        if self.mean_ is not None:
            arrays = {"mean": self.mean_, "scale": self.scale_, "reference": self.reference_}
        return {"mode": self.mode, "baseline_emotions": list(BASELINE_EMOTIONS)}, arrays

    @classmethod
    def from_state(cls, params: dict, arrays: dict[str, np.ndarray]) -> "FeatureNormalizer":
        normalizer = cls(mode=params.get("mode", "population"))
        if arrays:
            normalizer.mean_ = np.asarray(arrays["mean"], dtype=np.float64)
            normalizer.scale_ = np.asarray(arrays["scale"], dtype=np.float64)
            normalizer.reference_ = np.asarray(arrays["reference"], dtype=np.float64)
        elif normalizer.mode != "none":
            raise ValueError(f"normalization mode {normalizer.mode!r} needs mean/scale arrays")
        return normalizer


# ---- enrolment (library entry point; the CLI's --enroll uses the same) --------------------
def split_for_enrolment(wave: np.ndarray, sample_rate: int = 16_000, segment_s: float = 4.0,
                        min_segment_s: float = 1.0, silence_db: float = 35.0) -> list[np.ndarray]:
    """Cut an enrolment recording into speech chunks like the ones the monitor embeds.

    Frames more than ``silence_db`` below the loudest frame are dropped, the
    remaining speech is cut into consecutive ``segment_s`` chunks (a shorter
    last chunk is kept when it is at least ``min_segment_s``).
    """
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    hop = int(0.02 * sample_rate)
    n = len(wave) // hop
    if n == 0:
        return []
    frames = wave[: n * hop].reshape(n, hop).astype(np.float64)
    energy = 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12)
    speech = frames[energy > energy.max() - silence_db].reshape(-1).astype(np.float32)
    size = int(segment_s * sample_rate)
    chunks = [speech[i:i + size] for i in range(0, len(speech), size)]
    return [c for c in chunks if len(c) >= int(min_segment_s * sample_rate)]


def enroll(model, waves: Sequence[np.ndarray], model_id: str = "", source: str = "",
           sample_rate: int = 16_000, segment_s: float = 4.0, split: bool = True) -> SpeakerBaseline:
    """A speaker's baseline from enrolment audio (e.g. 30-60 s of calm reading at intake).

    ``model`` is a ``monitor.model.EmotionModel`` (anything with
    ``backbone_features(waves)``); ``waves`` are 16 kHz recordings, each cut
    with :func:`split_for_enrolment`, or, with ``split=False``, speech segments
    already cut the way the monitor cuts them (``monitor.enrolment`` does
    this with the live VAD). The baseline is the mean of the raw backbone
    features of the chunks: the same space ``FeatureNormalizer.apply`` shifts
    in. Store it with the patient and pass it to every later session.
    """
    chunks = [c for w in waves for c in (split_for_enrolment(w, sample_rate, segment_s) if split else [np.asarray(w)])]
    if not chunks:
        raise ValueError("enrolment audio holds no speech (at least 1 s is needed; 30-60 s is recommended)")
    feats = model.backbone_features(chunks)
    feats = feats.detach().float().cpu().numpy() if hasattr(feats, "detach") else np.asarray(feats, dtype=np.float64)
    return SpeakerBaseline(mean=np.asarray(feats, dtype=np.float64).mean(axis=0), n_segments=len(chunks),
                           seconds=float(sum(len(c) for c in chunks) / sample_rate), model_id=model_id, source=source)
