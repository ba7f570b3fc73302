"""Synthetic emotion embeddings with known geometry, for tests and benchmarks.

Class means are the anchors embedded linearly into ``dim`` dimensions (a random
orthonormal pair of directions, times ``scale``), plus a class-specific offset
of length ``offset`` in the remaining directions (so classes with nearby
anchors still separate), plus isotropic noise of std ``noise`` per dimension.
So the true 2-d structure is the anchor layout itself, and a reducer that
keeps it must keep the anchors' angular order.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def make_clusters(
    n: int,
    anchors: Mapping[str, Sequence[float]],
    dim: int = 100,
    scale: float = 8.0,
    offset: float = 2.0,
    noise: float = 1.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` float32 embeddings [n, dim] and their labels, classes balanced.

    Seeded by ``seed`` only, so every call with the same arguments returns the
    same data. Draw train and held-out points together and split them, so both
    come from the same class means.
    """
    rng = np.random.default_rng(seed)
    classes = list(anchors)
    basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    plane, rest = basis[:, :2], basis[:, 2:]
    class_means = []
    for c in classes:
        z = rest @ rng.normal(size=dim - 2)
        class_means.append(scale * plane @ np.asarray(anchors[c], dtype=np.float64) + offset * z / np.linalg.norm(z))
    means = np.stack(class_means)
    labels = np.asarray([classes[i % len(classes)] for i in range(n)], dtype=str)
    rng.shuffle(labels)
    codes = np.array([classes.index(c) for c in labels])
    X = means[codes] + noise * rng.normal(size=(n, dim))
    return X.astype(np.float32), labels
