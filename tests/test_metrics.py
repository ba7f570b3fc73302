"""calibration.metrics: known values, invariances and the wrap-around case."""

import math
from itertools import combinations

import numpy as np
import pytest
from scipy.stats import spearmanr

from calibration import metrics as M
from calibration.anchors import ANCHOR_SETS


def test_ccc_known_values():
    rng = np.random.default_rng(0)
    x = rng.normal(size=500)
    x = x - x.mean()
    assert M.ccc(x, x) == pytest.approx(1.0)
    assert M.ccc(x, -x) == pytest.approx(-1.0)
    # A pure shift keeps Pearson r at 1 but must lower CCC: 2 var / (2 var + d^2).
    v = x.var()
    assert M.ccc(x, x + 1.0) == pytest.approx(2 * v / (2 * v + 1.0))
    # Scaling: y = 2x -> 2*2v / (v + 4v) = 0.8
    assert M.ccc(x, 2 * x) == pytest.approx(0.8)
    assert M.ccc([1, 1, 1], [2, 2, 2]) == 0.0  # constant but off target: no concordance
    assert math.isnan(M.ccc([1, 1, 1], [1, 1, 1]))  # 0/0: undefined
    with pytest.raises(ValueError):
        M.ccc([1, 2], [1, 2, 3])


def test_uar_and_wa_on_imbalanced_classes():
    y = np.array(["a"] * 8 + ["b"] * 2)
    p = np.array(["a"] * 10)
    assert M.weighted_accuracy(y, p) == pytest.approx(0.8)
    assert M.uar(y, p) == pytest.approx(0.5)  # recall a = 1, b = 0
    assert M.uar(y, y) == 1.0


def circular_correlation_pairwise(a: np.ndarray, b: np.ndarray) -> float:
    """The defining O(n^2) pairwise sum of Fisher & Lee's circular correlation."""
    num = sa = sb = 0.0
    for i, j in combinations(range(a.size), 2):
        x, y = np.sin(a[i] - a[j]), np.sin(b[i] - b[j])
        num += x * y
        sa += x * x
        sb += y * y
    if sa == 0.0 or sb == 0.0:
        return float("nan")
    return float(num / np.sqrt(sa * sb))


def test_circular_correlation_closed_form_matches_pairwise_definition():
    rng = np.random.default_rng(1)
    a = rng.uniform(-np.pi, np.pi, 12)
    b = a + rng.normal(0, 0.6, 12)
    assert M.circular_correlation(a, b) == pytest.approx(circular_correlation_pairwise(a, b), abs=1e-12)


def test_circular_correlation_rotation_invariant_and_reflection_negative():
    a = np.radians([10, 80, 150, 200, 260, 330])
    assert M.circular_correlation(a, a) == pytest.approx(1.0)
    assert M.circular_correlation(a, a + 1.3) == pytest.approx(1.0)
    assert M.circular_correlation(a, -a) == pytest.approx(-1.0)


def test_circular_correlation_survives_the_wrap_where_rank_correlation_breaks():
    # Same circular order, but a rotation moves two angles across +-180 degrees.
    a = np.radians([-170, -100, -30, 40, 110, 170])
    b = M.wrap_angle(a + np.radians(25))
    assert M.circular_correlation(a, b) == pytest.approx(1.0)
    assert spearmanr(a, b).statistic < 0.5


def test_mean_abs_angular_error_takes_the_short_way():
    assert math.degrees(M.mean_abs_angular_error(np.radians([179.0]), np.radians([-179.0]))) == pytest.approx(2.0)
    assert M.mean_abs_angular_error([0.0, 1.0], [0.0, 1.0]) == 0.0
    assert math.degrees(M.mean_abs_angular_error([0.0], [math.pi])) == pytest.approx(180.0)


def test_circular_order_skips_origin_anchor():
    anchors = dict(ANCHOR_SETS["ravdess"].anchors)
    labels = np.array(list(anchors))
    pts = np.array([anchors[c] for c in labels]) * 0.5  # same angles, shrunk
    res = M.circular_order(pts, labels, anchors)
    assert "neutral" not in res["classes"]
    assert res["fisher_lee"] == pytest.approx(1.0)
    assert res["mean_abs_angular_error_deg"] == pytest.approx(0.0, abs=1e-9)


def test_intensity_check_counts_matched_pairs_only():
    speakers = ["s1", "s1", "s1", "s1", "s2", "s2", "s2"]
    sentences = ["1", "1", "2", "2", "1", "1", "1"]
    labels = ["angry", "angry", "angry", "angry", "sad", "sad", "happy"]
    intensity = ["normal", "strong", "normal", "strong", "strong", "normal", "strong"]
    arousal = [0.1, 0.5, 0.4, 0.2, 0.3, 0.3, 0.9]
    res = M.intensity_check(arousal, intensity, speakers, sentences, labels)
    # pairs: (s1,1,angry) win; (s1,2,angry) loss; (s2,1,sad) tie; happy has no partner
    assert res == {"share": pytest.approx(1 / 3), "n_pairs": 3, "n_ties": 1}
    numeric = M.intensity_check([0.0, 1.0], [1, 2], ["a", "a"], ["x", "x"], ["sad", "sad"])
    assert numeric["share"] == 1.0 and numeric["n_pairs"] == 1


def test_mahalanobis_separation_matches_hand_computation():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(400, 2)) * [1.0, 2.0]
    b = rng.normal(size=(400, 2)) * [1.0, 2.0] + [3.0, 0.0]
    pts = np.vstack([a, b])
    labels = np.array(["a"] * 400 + ["b"] * 400)
    res = M.mahalanobis_separation(pts, labels)
    d = b.mean(0) - a.mean(0)
    pooled = (np.cov(a, rowvar=False) + np.cov(b, rowvar=False)) / 2
    assert res["pairs"]["a|b"] == pytest.approx(float(np.sqrt(d @ np.linalg.solve(pooled, d))), rel=1e-4)
    assert 2.7 < res["min"] < 3.3  # ~3 standard deviations apart along valence


def test_anchor_agreement_and_drift():
    anchors = {"happy": (0.76, 0.48), "sad": (-0.63, -0.27), "angry": (-0.43, 0.67)}
    labels = np.array(["happy", "sad", "angry"] * 50)
    target = M.anchor_targets(labels, anchors)
    assert M.anchor_agreement(target, labels, anchors)["mean"] == pytest.approx(1.0)
    shifted = target + [0.3, 0.0]
    res = M.anchor_agreement(shifted, labels, anchors)
    assert res["arousal"] == pytest.approx(1.0) and res["valence"] < 0.9
    drift = M.centroid_drift(shifted, labels, anchors)
    assert drift["mean"] == pytest.approx(0.3)
    with pytest.raises(KeyError):
        M.anchor_targets(["calm"], anchors)


def test_boundary_share_counts_points_piled_up_on_the_clip_edge():
    pts = np.array([[0.0, 0.0], [1.0, 0.2], [-0.5, -0.99], [0.97, 0.5], [-1.0, 1.0]])
    assert M.boundary_share(pts) == pytest.approx(3 / 5)  # (1, .2), (-.5, -.99), (-1, 1); 0.97 is inside
    assert M.boundary_share(pts, margin=0.05) == pytest.approx(4 / 5)
    assert np.isnan(M.boundary_share(np.zeros((0, 2))))
