"""The rolling heat map: weights land in the right cell and fade as configured."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from monitor.live.heatmap import HeatmapConfig, RollingHeatmap, cell_of


def test_cell_of_corners_and_centre():
    assert cell_of(-1.0, -1.0, 10) == (0, 0)
    assert cell_of(1.0, 1.0, 10) == (9, 9)
    assert cell_of(0.05, -0.95, 10) == (0, 5)  # row = arousal, col = valence
    assert cell_of(5.0, -5.0, 10) == (0, 9)  # outside the square -> border


def test_weight_is_duration_times_confidence():
    hm = RollingHeatmap(HeatmapConfig(bins=10, smoothing_sigma=0))
    hm.add(0.5, -0.5, t=1.0, duration=2.0, confidence=0.25)
    snap = hm.snapshot()
    assert snap.total_weight == pytest.approx(0.5)
    assert snap.grid[cell_of(0.5, -0.5, 10)] == pytest.approx(0.5)
    assert np.count_nonzero(snap.grid) == 1


def test_exponential_decay_halves_per_half_life():
    hm = RollingHeatmap(HeatmapConfig(bins=8, mode="decay", half_life_s=10.0, smoothing_sigma=0))
    hm.add(0.0, 0.0, t=0.0, duration=1.0)
    assert hm.snapshot(t=10.0).total_weight == pytest.approx(0.5)
    assert hm.snapshot(t=30.0).total_weight == pytest.approx(0.125)
    hm.add(0.0, 0.0, t=20.0, duration=1.0)  # out of order: decays by its own age
    assert hm.snapshot().total_weight == pytest.approx(0.125 + 0.5)


def test_window_forgets_exactly():
    hm = RollingHeatmap(HeatmapConfig(bins=8, mode="window", window_s=5.0, smoothing_sigma=0))
    hm.add(0.9, 0.9, t=1.0)
    hm.add(-0.9, -0.9, t=4.0)
    assert hm.snapshot().total_weight == pytest.approx(2.0)
    snap = hm.snapshot(t=7.0)  # the first point has left the window
    assert snap.total_weight == pytest.approx(1.0) and snap.points == 1
    assert snap.grid[cell_of(-0.9, -0.9, 8)] == pytest.approx(1.0)
    assert hm.snapshot(t=20.0).total_weight == 0.0


def test_smoothing_keeps_total_and_spreads():
    hm = RollingHeatmap(HeatmapConfig(bins=16, smoothing_sigma=1.5))
    hm.add(0.0, 0.0, t=0.0, duration=3.0)
    snap = hm.snapshot()
    assert snap.grid.sum() == pytest.approx(3.0)
    assert np.count_nonzero(snap.grid > 1e-6) > 9


def test_bounded_memory_in_window_mode():
    hm = RollingHeatmap(HeatmapConfig(bins=4, mode="window", window_s=1e9, max_points=100, smoothing_sigma=0))
    for i in range(1000):
        hm.add(0.0, 0.0, t=float(i))
    assert hm.snapshot().points == 100
    assert hm.snapshot().total_weight == pytest.approx(100.0)


def test_non_finite_points_are_refused():
    with pytest.raises(ValueError):
        RollingHeatmap().add(float("nan"), 0.0, t=0.0)


def test_concurrent_adds_and_snapshots():
    hm = RollingHeatmap(HeatmapConfig(bins=8, half_life_s=1e9, smoothing_sigma=0))
    def writer():
        for i in range(2000):
            hm.add(0.1, 0.1, t=float(i) * 1e-3)
    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(200):
        hm.snapshot()
    for t in threads:
        t.join()
    assert hm.snapshot().total_weight == pytest.approx(8000.0, rel=1e-6)
