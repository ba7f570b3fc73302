"""The circumplex's quadrants: one rule and one vocabulary for the live dashboard, the history and reports.

A point closer than ``NEUTRAL_RADIUS`` to the centre counts as "neutral";
otherwise arousal >= 0 is "high" and valence >= 0 is "pleasant" (ties go up
and right). The server sends ``QUADRANT_NAMES`` and ``NEUTRAL_RADIUS`` to the
page in its ``hello``, so the browser applies this very rule.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

#: Points closer than this to the centre count as "neutral" rather than in a quadrant.
NEUTRAL_RADIUS = 0.2

#: Quadrant keys (stable: stored and sent on the wire) and the words a clinician reads.
QUADRANT_NAMES: dict[str, str] = {
    "high_arousal_positive": "pleasant · high arousal",
    "high_arousal_negative": "unpleasant · high arousal",
    "low_arousal_negative": "unpleasant · low arousal",
    "low_arousal_positive": "pleasant · low arousal",
    "neutral": "neutral (centre)",
}
QUADRANTS: tuple[str, ...] = tuple(QUADRANT_NAMES)


def quadrant(valence: float, arousal: float, neutral_radius: float = NEUTRAL_RADIUS) -> str:
    """The quadrant key of one point."""
    if math.hypot(valence, arousal) < neutral_radius:
        return "neutral"
    if arousal >= 0:
        return "high_arousal_positive" if valence >= 0 else "high_arousal_negative"
    return "low_arousal_positive" if valence >= 0 else "low_arousal_negative"


def quadrant_masks(valence: ArrayLike, arousal: ArrayLike,
                   neutral_radius: float = NEUTRAL_RADIUS) -> dict[str, np.ndarray]:
    """Vectorised :func:`quadrant`: one boolean mask per quadrant key (they partition the points)."""
    v = np.asarray(valence, dtype=np.float64)
    a = np.asarray(arousal, dtype=np.float64)
    neutral = np.hypot(v, a) < neutral_radius
    high, pos = a >= 0, v >= 0
    return {
        "high_arousal_positive": ~neutral & high & pos,
        "high_arousal_negative": ~neutral & high & ~pos,
        "low_arousal_negative": ~neutral & ~high & ~pos,
        "low_arousal_positive": ~neutral & ~high & pos,
        "neutral": neutral,
    }


#: Russell's (1980) affect words at about their angles on the circumplex (degrees, 0 = pleasant, 90 = high
#: arousal). The dashboard (sent in ``hello``) and the reports label their circles with these, so a clinician
#: reads the same words in both.
AFFECT_WORDS: tuple[tuple[str, float], ...] = (
    ("excited", 50.0), ("happy · pleased", 14.0), ("content", 340.0), ("relaxed · calm", 313.0),
    ("sleepy · tired", 270.0), ("bored", 236.0), ("sad · depressed", 206.0), ("miserable", 186.0),
    ("distressed", 148.0), ("afraid · alarmed", 124.0), ("angry", 101.0),
)
