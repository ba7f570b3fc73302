"""Shuffled batches balanced over classes and, when corpora are mixed, over corpora.

Each clip is drawn with probability proportional to
``1 / (n_corpora * n_classes_in_its_corpus * n_clips_of_its_(corpus, class))``,
so every corpus contributes the same share of a batch and, inside it, every
class the same share. ``balance="class"`` balances classes over the pooled data
only; ``"none"`` is a plain shuffle.

``"centred"`` (corpus and class balance, then a prior with its centre at the
circumplex's origin) fixes a lean at its cause: balanced over the classes the
corpora happen to have, the training prior sits wherever their anchors' mean
sits. Acted corpora hold more unpleasant emotions (anger, fear, disgust,
sadness) than pleasant ones, so a model that has learnt nothing about a new
voice already leans "unpleasant". Here the classes' shares are moved as little
as possible (least squares from equal shares, each kept at least a quarter of
it) so that the anchor-weighted mean valence of the prior is 0. (Arousal is
left alone: the corpora's only low-arousal classes are sadness, calm and
neutral, and centring it would pile the prior onto sadness.)
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

BALANCE_MODES = ("corpus+class", "class", "none", "centred")


def sample_weights(labels: Iterable[str], corpora: Iterable[str] | None = None,
                   balance: str = "corpus+class") -> np.ndarray:
    """Per-clip sampling weights (sum to 1); ``labels`` and ``corpora`` are per clip (lists or arrays)."""
    if balance not in BALANCE_MODES:
        raise ValueError(f"balance must be one of {BALANCE_MODES}, got {balance!r}")
    labels = list(labels)
    n = len(labels)
    if n == 0:
        return np.zeros(0)
    if balance == "none":
        return np.full(n, 1.0 / n)
    if balance == "centred":
        base = sample_weights(labels, corpora, "corpus+class")
        shares = centred_class_shares(sorted(set(labels)))
        current = {c: float(base[[y == c for y in labels]].sum()) for c in shares}
        w = np.asarray([b * shares[y] / current[y] for b, y in zip(base, labels, strict=True)])
        return np.asarray(w / w.sum())
    if balance == "class" or corpora is None:
        counts = Counter(labels)
        w = np.asarray([1.0 / (len(counts) * counts[y]) for y in labels])
        return np.asarray(w / w.sum())
    corpus_of = list(corpora)
    pair = Counter(zip(corpus_of, labels, strict=True))
    classes_per_corpus = Counter(c for c, _ in pair)
    n_corpora = len(classes_per_corpus)
    w = np.asarray([1.0 / (n_corpora * classes_per_corpus[c] * pair[(c, y)])
                    for c, y in zip(corpus_of, labels, strict=True)])
    return np.asarray(w / w.sum())


def centred_class_shares(classes: Sequence[str], floor: float = 0.25) -> dict[str, float]:
    """Class shares closest to equal whose anchor-weighted mean valence is 0.

    Least squares under the centring constraint and summing to one; a share
    below ``floor`` x equal is pinned there and the rest solved again. When the
    anchors cannot be centred (all on one side), the shares stay as close as the
    floors allow.
    """
    from calibration.anchors import get_anchor_set

    table = get_anchor_set("all")
    valence = np.asarray([table.anchor(c)[0] for c in classes], dtype=np.float64)
    n = len(classes)
    equal = np.full(n, 1.0 / n)
    pinned = np.zeros(n, dtype=bool)
    shares = equal.copy()
    for _ in range(n):
        free = ~pinned
        fixed = np.where(pinned, floor / n, 0.0)
        target = np.array([1.0, 0.0]) - np.r_[fixed.sum(), valence @ fixed]
        m = np.c_[np.ones(free.sum()), valence[free]]  # constraints on the free shares: sum, mean valence
        correction = m @ np.linalg.lstsq(m.T @ m, m.T @ equal[free] - target, rcond=None)[0]
        shares = fixed.copy()
        shares[free] = equal[free] - correction
        low = free & (shares < floor / n)
        if not low.any():
            break
        pinned |= low
    shares = np.maximum(shares, floor / n)
    return dict(zip(classes, (shares / shares.sum()).tolist(), strict=True))


class BalancedSampler(torch.utils.data.Sampler[int]):
    """Draws ``num_samples`` indices per epoch with replacement by :func:`sample_weights`.

    Uses its own ``torch.Generator`` whose state is saved in checkpoints, so a
    resumed run draws the same batches as an uninterrupted one.
    """

    def __init__(self, weights: np.ndarray, num_samples: int | None = None, seed: int = 0):
        self.weights = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        self.num_samples = int(num_samples or len(weights))
        self.generator = torch.Generator().manual_seed(seed)
        self.uniform = bool(torch.allclose(self.weights, self.weights[0].expand_as(self.weights)))

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        if self.uniform and self.num_samples == len(self.weights):  # plain shuffle
            yield from torch.randperm(len(self.weights), generator=self.generator).tolist()
        else:
            yield from torch.multinomial(self.weights, self.num_samples, replacement=True,
                                         generator=self.generator).tolist()

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
