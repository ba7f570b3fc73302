"""The projector: an emotion embedding becomes a point on the circumplex.

Stage II's anchored reducer places the embedding at (valence, arousal); the
classifier's probabilities give the point its confidence (the top class's
probability) and the top classes the dashboard shows.
"""

from __future__ import annotations

import time
from typing import Protocol, Sequence

import numpy as np

from monitor.live.events import Embedded, Point


class CircumplexReducer(Protocol):
    """What the projector needs of Stage II: ``calibration.reducer.AnchoredReducer``, or a stand-in in tests."""

    def transform(self, X: np.ndarray, method: str = "fast") -> np.ndarray:
        """Embeddings [n, d] -> [n, 2] (valence, arousal)."""
        ...


class Projector:
    """Maps ``Embedded`` -> ``Point`` with a fitted reducer (``transform(X) -> [n, 2]``)."""

    def __init__(self, reducer: CircumplexReducer | None, labels: Sequence[str], method: str = "fast",
                 top_k: int = 3):
        if reducer is None:
            raise ValueError("the model bundle has no fitted reducer; it cannot place points on the circumplex")
        self.reducer = reducer
        self.labels = tuple(labels)
        self.method = method
        self.top_k = top_k

    def place(self, embeddings: np.ndarray) -> np.ndarray:
        """[n, 100] embeddings -> [n, 2] (valence, arousal), clipped to the circumplex's square."""
        xy = np.asarray(self.reducer.transform(np.atleast_2d(embeddings), method=self.method), dtype=np.float64)
        return np.clip(xy, -1.0, 1.0)

    def top_classes(self, probabilities: np.ndarray) -> dict[str, float]:
        order = np.argsort(probabilities)[::-1][: self.top_k]
        return {self.labels[i]: round(float(probabilities[i]), 4) for i in order}

    def __call__(self, item: Embedded) -> Point:
        valence, arousal = self.place(item.embedding[None, :])[0]
        segment = item.segment
        return Point(
            index=segment.index,
            t_start=round(segment.t_start, 3),
            t_end=round(segment.t_end, 3),
            valence=float(valence),
            arousal=float(arousal),
            confidence=float(np.max(item.probabilities)),
            probabilities=self.top_classes(item.probabilities),
            latency_ms=(time.monotonic() - segment.closed_at) * 1000.0,
        )
