"""The projector: an emotion embedding becomes a point on the circumplex.

Stage II's anchored reducer places the embedding at (valence, arousal); the
classifier's probabilities give the point its confidence (the top class's
probability) and travel with it, every class in the model's label order.

``Projector.locate`` is the one place where an embedding and its probabilities
become those values: the live pipeline (``__call__``) and the researcher's API
(``monitor.api``) both go through it, one segment at a time, so the same
segment gets the same numbers on both paths.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from monitor.live.events import Embedded, Point


class CircumplexReducer(Protocol):
    """What the projector needs of Stage II: ``calibration.reducer.AnchoredReducer``, or a stand-in in tests."""

    def transform(self, X: np.ndarray, method: str = "fast") -> np.ndarray:
        """Embeddings [n, d] -> [n, 2] (valence, arousal)."""
        ...


@dataclass(frozen=True)
class Placement:
    """Where one segment lands: its point's values, before session times are attached."""

    valence: float
    arousal: float
    confidence: float
    probabilities: dict[str, float]  # every class, in the model's label order


class Projector:
    """Maps ``Embedded`` -> ``Point`` with a fitted reducer (``transform(X) -> [n, 2]``)."""

    def __init__(self, reducer: CircumplexReducer | None, labels: Sequence[str], method: str = "fast"):
        if reducer is None:
            raise ValueError("the model bundle has no fitted reducer; it cannot place points on the circumplex")
        self.reducer = reducer
        self.labels = tuple(labels)
        self.method = method

    def place(self, embeddings: np.ndarray) -> np.ndarray:
        """[n, 100] embeddings -> [n, 2] (valence, arousal), clipped to the circumplex's square."""
        xy = np.asarray(self.reducer.transform(np.atleast_2d(embeddings), method=self.method), dtype=np.float64)
        return np.clip(xy, -1.0, 1.0)

    def class_probabilities(self, probabilities: np.ndarray) -> dict[str, float]:
        """Every class's probability, in label order (unrounded: the model's float32 values as floats)."""
        probs = np.asarray(probabilities).reshape(-1)
        if len(probs) != len(self.labels):
            raise ValueError(f"{len(probs)} probabilities for {len(self.labels)} classes")
        return {label: float(p) for label, p in zip(self.labels, probs, strict=True)}

    def locate(self, embedding: np.ndarray, probabilities: np.ndarray) -> Placement:
        """One segment's embedding [d] and class probabilities [C] -> its placement on the circumplex."""
        valence, arousal = self.place(np.asarray(embedding)[None, :])[0]
        return Placement(valence=float(valence), arousal=float(arousal),
                         confidence=float(np.max(probabilities)),
                         probabilities=self.class_probabilities(probabilities))

    def __call__(self, item: Embedded) -> Point:
        where = self.locate(item.embedding, item.probabilities)
        segment = item.segment
        return Point(
            index=segment.index,
            t_start=round(segment.t_start, 3),
            t_end=round(segment.t_end, 3),
            valence=where.valence,
            arousal=where.arousal,
            confidence=where.confidence,
            probabilities=where.probabilities,
            latency_ms=(time.monotonic() - segment.closed_at) * 1000.0,
            speaker=None if item.attribution is None else item.attribution.speaker,
            speaker_score=None if item.attribution is None or item.attribution.speaker_score is None
            else round(float(item.attribution.speaker_score), 4),
        )
