"""Shuffled batches balanced over classes and, when corpora are mixed, over corpora.

Each clip is drawn with probability proportional to
``1 / (n_corpora * n_classes_in_its_corpus * n_clips_of_its_(corpus, class))``,
so every corpus contributes the same share of a batch and, inside it, every
class the same share. ``balance="class"`` balances classes over the pooled data
only; ``"none"`` is a plain shuffle.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Iterator

import numpy as np
import torch

BALANCE_MODES = ("corpus+class", "class", "none")


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
