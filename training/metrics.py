"""Thin adapters from the training side to :mod:`calibration.metrics` (the one place metrics are defined)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from calibration.metrics import anchor_agreement, boundary_share, ccc, intensity_check, uar, weighted_accuracy  # noqa: F401


def anchor_ccc(points: np.ndarray, labels: Sequence[str], anchors: Mapping[str, Sequence[float]]) -> dict:
    """CCC of each point against the anchor of its true label, per axis (``calibration.metrics.anchor_agreement``)."""
    return anchor_agreement(points, labels, anchors)


def expected_anchor(probs: np.ndarray, class_labels: Sequence[str], anchors: Mapping[str, Sequence[float]]) -> np.ndarray:
    """Probability-weighted mean of the class anchors: a reducer-free (valence, arousal) estimate."""
    table = np.asarray([anchors[c] for c in class_labels], dtype=np.float64)
    return np.asarray(probs, dtype=np.float64) @ table


def restricted_predictions(probs: np.ndarray, class_labels: Sequence[str], allowed: Sequence[str]) -> np.ndarray:
    """Arg-max over the classes in ``allowed`` only (a test corpus's own label set)."""
    class_labels = list(class_labels)
    cols = [class_labels.index(c) for c in allowed if c in class_labels]
    return np.asarray([class_labels[c] for c in cols])[np.argmax(np.asarray(probs)[:, cols], axis=1)]
