"""The rolling circumplex heat map: where the recent speech sat on valence x arousal.

Each point adds its weight (segment duration x confidence) to one cell of a
grid over [-1, 1]^2. Old speech fades either by exponential decay (a half-life)
or by leaving a fixed time window. Times are session times, so a replay at any
speed builds the same map. Adding a point is O(1) (plus O(points that expire)
for the window mode); smoothing is applied only when a snapshot is taken.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.ndimage import gaussian_filter


@dataclass
class HeatmapConfig:
    """How the heat map accumulates and forgets.

    mode: "decay" (exponential, ``half_life_s``) or "window" (hard ``window_s``).
    bins: cells per axis. smoothing_sigma: Gaussian blur of snapshots, in cells (0 = none).
    max_points: bound on the points remembered by the window mode.
    display_max_s: the dashboard's fixed colour scale: a cell holding this many seconds of recent speech
    (confidence-weighted) or more gets the top colour. Fixed for the whole session, so a colour means the
    same amount of speech at minute 5 and minute 50 (a scale that follows the peak would not compare).
    """

    bins: int = 48
    mode: str = "decay"
    half_life_s: float = 120.0
    window_s: float = 300.0
    smoothing_sigma: float = 1.0
    use_confidence: bool = True
    max_points: int = 100_000
    display_max_s: float = 2.0

    def __post_init__(self) -> None:
        if self.bins < 2:
            raise ValueError("heat map bins must be >= 2")
        if self.mode not in ("decay", "window"):
            raise ValueError(f"heat map mode must be 'decay' or 'window', got {self.mode!r}")
        if self.half_life_s <= 0 or self.window_s <= 0:
            raise ValueError("heat map half-life and window must be positive")
        if self.smoothing_sigma < 0:
            raise ValueError("smoothing sigma must be >= 0")
        if not self.display_max_s > 0:
            raise ValueError("the heat map's colour scale maximum must be positive")


@dataclass(frozen=True)
class HeatmapSnapshot:
    """A copy of the grid at a session time. ``grid[i, j]``: arousal row i (bottom up), valence column j."""

    t: float
    grid: np.ndarray
    total_weight: float
    points: int

    @property
    def bins(self) -> int:
        return int(self.grid.shape[0])


class PlacedPoint(Protocol):
    """What the heat map reads of a point (``monitor.live.events.Point``, which imports this module)."""

    @property
    def valence(self) -> float: ...

    @property
    def arousal(self) -> float: ...

    @property
    def t_end(self) -> float: ...

    @property
    def duration(self) -> float: ...

    @property
    def confidence(self) -> float: ...


def cell_of(valence: float, arousal: float, bins: int) -> tuple[int, int]:
    """Grid cell (row=arousal, col=valence) for a point; values outside [-1, 1] go to the border cell."""
    def index(x: float) -> int:
        return int(np.clip(np.floor((x + 1.0) / 2.0 * bins), 0, bins - 1))

    return index(arousal), index(valence)


class RollingHeatmap:
    """A valence x arousal grid that forgets old speech. Thread-safe."""

    def __init__(self, config: HeatmapConfig | None = None):
        self.config = config or HeatmapConfig()
        self._lock = threading.Lock()
        self._grid = np.zeros((self.config.bins, self.config.bins), dtype=np.float64)
        self._t = 0.0  # session time the grid's decay refers to
        self._points = 0
        self._window: deque[tuple[float, int, int, float]] = deque()

    def _decay_to(self, t: float) -> None:
        if t > self._t:
            self._grid *= 0.5 ** ((t - self._t) / self.config.half_life_s)
            self._t = t

    def _expire_to(self, t: float) -> None:
        self._t = max(self._t, t)
        horizon = self._t - self.config.window_s
        while self._window and (self._window[0][0] <= horizon or len(self._window) > self.config.max_points):
            _, row, col, weight = self._window.popleft()
            self._grid[row, col] -= weight
            self._points -= 1
        if not self._window:
            self._grid[:] = 0.0  # no float residue once everything has left

    def _advance(self, t: float) -> None:
        if self.config.mode == "decay":
            self._decay_to(t)
        else:
            self._expire_to(t)

    def add(self, valence: float, arousal: float, t: float, duration: float = 1.0, confidence: float = 1.0) -> None:
        """Add one point observed at session time ``t`` (normally its segment's end)."""
        if not (np.isfinite(valence) and np.isfinite(arousal) and np.isfinite(t)):
            raise ValueError("heat map points must be finite")
        weight = max(float(duration), 0.0) * (max(float(confidence), 0.0) if self.config.use_confidence else 1.0)
        row, col = cell_of(valence, arousal, self.config.bins)
        with self._lock:
            if self.config.mode == "decay":
                self._decay_to(t)
                # A point older than the grid's time (out of order) decays by its own age.
                weight *= 0.5 ** (max(self._t - t, 0.0) / self.config.half_life_s)
            else:
                self._window.append((t, row, col, weight))
            self._grid[row, col] += weight
            self._points += 1
            if self.config.mode == "window":
                self._expire_to(t)

    def add_point(self, point: PlacedPoint) -> None:
        """Add a ``monitor.live.events.Point``."""
        self.add(point.valence, point.arousal, point.t_end, point.duration, point.confidence)

    def snapshot(self, t: float | None = None) -> HeatmapSnapshot:
        """A smoothed copy of the grid as of session time ``t`` (default: the latest point)."""
        with self._lock:
            if t is not None:
                self._advance(t)
            grid = self._grid.copy()
            t_now = self._t
            points = self._points
        np.maximum(grid, 0.0, out=grid)
        total = float(grid.sum())
        if self.config.smoothing_sigma > 0 and total > 0:
            grid = gaussian_filter(grid, sigma=self.config.smoothing_sigma, mode="constant")
            grid *= total / max(float(grid.sum()), 1e-12)  # keep the total weight through the blur
        return HeatmapSnapshot(t=t_now, grid=grid, total_weight=total, points=points)
