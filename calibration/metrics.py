"""Evaluation metrics for points on the valence-arousal plane (pure numpy).

Every function takes plain arrays and returns plain floats or dicts, so the
evaluation CLI, the benchmarks and the tests all compute the same numbers.
Angles are in radians unless a name says otherwise.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray


def _paired(name: str, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two inputs of a paired metric, checked to match element for element."""
    if a.shape != b.shape:
        raise ValueError(f"{name}: shapes differ, {a.shape} vs {b.shape}")
    return a, b


def _paired_floats(name: str, a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    return _paired(name, np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel())


def ccc(x: ArrayLike, y: ArrayLike) -> float:
    """Lin's concordance correlation coefficient.

    Unlike Pearson's r it also penalises shifts and scale differences, which is
    the point: a prediction must land *on* the target, not merely correlate.
    Population (ddof=0) moments, as in Lin (1989). NaN when both inputs are
    the same constant (0/0), where the coefficient is undefined.
    """
    x, y = _paired_floats("ccc", x, y)
    if x.size == 0:
        return float("nan")
    mx, my = x.mean(), y.mean()
    vx, vy = x.var(), y.var()
    cov = np.mean((x - mx) * (y - my))
    den = vx + vy + (mx - my) ** 2
    if den == 0.0:
        return float("nan")
    return float(2.0 * cov / den)


def uar(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Unweighted average recall: mean per-class recall over the true classes.

    The standard speech-emotion score because it is not inflated by the
    majority class.
    """
    t, p = _paired("uar", np.asarray(y_true), np.asarray(y_pred))
    if t.size == 0:
        return float("nan")
    recalls = [np.mean(p[t == c] == c) for c in np.unique(t)]
    return float(np.mean(recalls))


def weighted_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Weighted accuracy (WA): the plain share of correct predictions."""
    t, p = _paired("weighted_accuracy", np.asarray(y_true), np.asarray(y_pred))
    if t.size == 0:
        return float("nan")
    return float(np.mean(t == p))


def wrap_angle(a: ArrayLike) -> NDArray[np.float64]:
    """Map angles onto (-pi, pi]."""
    w = np.mod(np.asarray(a, dtype=np.float64) + np.pi, 2.0 * np.pi) - np.pi
    return np.where(w == -np.pi, np.pi, w)


def circular_correlation(a: ArrayLike, b: ArrayLike) -> float:
    """Fisher & Lee (1983) circular-circular correlation of two angle samples.

    rho = sum_{i<j} sin(a_i-a_j) sin(b_i-b_j) /
          sqrt(sum_{i<j} sin^2(a_i-a_j) * sum_{i<j} sin^2(b_i-b_j)).
    It is +1 when b is a rotation of a (same circular order and spacing), -1
    for a reflection, and it does not break at the +-180 degree wrap the way a
    rank correlation of raw angles does. Computed with Fisher & Lee's O(n)
    closed form, which equals the pairwise sum.
    """
    a, b = _paired_floats("circular_correlation", a, b)
    n = a.size
    if n < 2:
        return float("nan")
    ca, sa, cb, sb = np.cos(a), np.sin(a), np.cos(b), np.sin(b)
    A = np.sum(ca * cb)
    B = np.sum(sa * sb)
    C = np.sum(ca * sb)
    D = np.sum(sa * cb)
    E, F = np.sum(np.cos(2 * a)), np.sum(np.sin(2 * a))
    G, H = np.sum(np.cos(2 * b)), np.sum(np.sin(2 * b))
    den = (n * n - E * E - F * F) * (n * n - G * G - H * H)
    if den <= 0.0:
        return float("nan")
    return float(4.0 * (A * B - C * D) / np.sqrt(den))


def mean_abs_angular_error(a: ArrayLike, b: ArrayLike) -> float:
    """Mean absolute angular difference, taking the short way round (radians, in [0, pi])."""
    a, b = _paired_floats("mean_abs_angular_error", a, b)
    if a.size == 0:
        return float("nan")
    return float(np.mean(np.abs(wrap_angle(a - b))))


def boundary_share(points: ArrayLike, margin: float = 0.02) -> float:
    """Share of points within ``margin`` of the [-1, 1] square's edge (where a clipped output piles up).

    CCC alone rewards stretching the layout (it corrects the shrinkage of unseen
    speakers toward the centre), but stretched points pile up on the clip
    boundary, where the heat map loses every distinction between them. This is
    the number that shows it; a layout fitted as intended keeps it near 0.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if pts.size == 0:
        return float("nan")
    return float(np.mean(np.any(np.abs(pts) >= 1.0 - margin, axis=1)))


def class_centroids(points: ArrayLike, labels: ArrayLike) -> dict[str, np.ndarray]:
    """Mean point of every label, in sorted label order."""
    points = np.asarray(points, dtype=np.float64)
    labels = np.asarray(labels)
    return {str(c): points[labels == c].mean(axis=0) for c in np.unique(labels)}


def _radius(point: Sequence[float] | np.ndarray) -> float:
    return float(np.hypot(point[0], point[1]))


def circular_order(
    points: ArrayLike,
    labels: ArrayLike,
    anchors: Mapping[str, Sequence[float]],
    min_radius: float = 1e-6,
) -> dict[str, Any]:
    """Circular agreement between class-centroid angles and anchor angles.

    Angles are measured about the origin of the circumplex. Classes whose
    anchor sits at the origin (neutral) have no angle and are left out.
    """
    cents = class_centroids(points, labels)
    used = [c for c in cents if c in anchors and _radius(anchors[c]) > min_radius]
    if len(used) < 2:
        return {"fisher_lee": float("nan"), "mean_abs_angular_error_deg": float("nan"),
                "per_class_angle_error_deg": {}, "classes": used}
    ca = np.array([np.arctan2(cents[c][1], cents[c][0]) for c in used])
    aa = np.array([np.arctan2(anchors[c][1], anchors[c][0]) for c in used])
    err = np.degrees(wrap_angle(ca - aa))
    return {
        "fisher_lee": circular_correlation(ca, aa),
        "mean_abs_angular_error_deg": float(np.degrees(mean_abs_angular_error(ca, aa))),
        "per_class_angle_error_deg": {c: float(e) for c, e in zip(used, err, strict=True)},
        "classes": used,
    }


def _intensity_level(value: object) -> float:
    """'normal' < 'strong'; numbers (or numeric strings) compare as numbers; '' is unknown."""
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    s = str(value).strip().lower()
    named = {"normal": 1.0, "low": 0.0, "medium": 1.0, "high": 2.0, "strong": 2.0}
    if s in named:
        return named[s]
    try:
        return float(s)
    except ValueError:
        return float("nan")


def intensity_check(
    arousal: ArrayLike,
    intensity: Iterable[object],
    speakers: Iterable[object],
    sentences: Iterable[object],
    labels: Iterable[object],
) -> dict[str, Any]:
    """Share of matched pairs where the stronger rendition gets the higher arousal.

    A pair is two utterances by the same speaker of the same sentence with the
    same emotion at different intensity (RAVDESS: normal vs strong). Ties are
    counted separately and do not count as successes.
    """
    ar = np.asarray(arousal, dtype=np.float64).ravel()
    lev = np.array([_intensity_level(v) for v in intensity], dtype=np.float64)
    columns = [[str(v) for v in values] for values in (speakers, sentences, labels)]
    if len({len(ar), len(lev), *(len(c) for c in columns)}) != 1:
        raise ValueError("intensity_check: inputs differ in length")
    keys = list(zip(*columns, strict=True))
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, k in enumerate(keys):
        if np.isfinite(lev[i]):
            groups.setdefault(k, []).append(i)
    wins = ties = n = 0
    for idx in groups.values():
        for i, j in combinations(idx, 2):
            if lev[i] == lev[j]:
                continue
            hi, lo = (i, j) if lev[i] > lev[j] else (j, i)
            n += 1
            if ar[hi] > ar[lo]:
                wins += 1
            elif ar[hi] == ar[lo]:
                ties += 1
    return {"share": float(wins / n) if n else float("nan"), "n_pairs": n, "n_ties": ties}


def mahalanobis_separation(points: ArrayLike, labels: ArrayLike, ridge: float = 1e-6) -> dict[str, Any]:
    """Mahalanobis distance between every pair of class Gaussians.

    d_ij = sqrt((mu_i - mu_j)^T ((S_i + S_j) / 2)^-1 (mu_i - mu_j)): the mean
    term of the Bhattacharyya distance, so classes with broad clouds count as
    less separated than their centroid gap alone suggests. ``ridge`` keeps
    degenerate (e.g. single-point) classes invertible.
    """
    points = np.asarray(points, dtype=np.float64)
    labels = np.asarray(labels)
    classes = [str(c) for c in np.unique(labels)]
    dim = points.shape[1]
    stats = {}
    for c in classes:
        p = points[labels == c]
        cov = np.cov(p, rowvar=False, ddof=1) if len(p) > 1 else np.zeros((dim, dim))
        stats[c] = (p.mean(axis=0), np.atleast_2d(cov) + ridge * np.eye(dim))
    pairs = {}
    for a, b in combinations(classes, 2):
        (ma, sa), (mb, sb) = stats[a], stats[b]
        d = ma - mb
        pairs[f"{a}|{b}"] = float(np.sqrt(d @ np.linalg.solve((sa + sb) / 2.0, d)))
    vals = np.array(list(pairs.values()))
    return {
        "mean": float(vals.mean()) if vals.size else float("nan"),
        "min": float(vals.min()) if vals.size else float("nan"),
        "min_pair": min(pairs, key=pairs.__getitem__) if pairs else None,
        "pairs": pairs,
    }


def anchor_targets(labels: Iterable[object], anchors: Mapping[str, Sequence[float]]) -> np.ndarray:
    """The (valence, arousal) anchor of every label, as an [n, 2] array."""
    try:
        return np.array([anchors[str(lab)] for lab in labels], dtype=np.float64).reshape(-1, 2)
    except KeyError as e:
        raise KeyError(f"no anchor for label {e.args[0]!r}; anchors: {sorted(anchors)}") from None


def anchor_agreement(points: ArrayLike, labels: Iterable[object],
                     anchors: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """CCC between each prediction and the anchor of its true category, per axis.

    The stand-in for dimensional accuracy on corpora with categorical labels
    only: it is high when utterances land where their emotion sits on the
    circumplex.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    target = anchor_targets(labels, anchors)
    v, a = ccc(points[:, 0], target[:, 0]), ccc(points[:, 1], target[:, 1])
    return {"valence": v, "arousal": a, "mean": float((v + a) / 2.0)}


def centroid_drift(points: ArrayLike, labels: ArrayLike, anchors: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """Euclidean distance from every class centroid to its anchor, and their mean."""
    cents = class_centroids(points, labels)
    per = {c: _radius(m - np.asarray(anchors[c], dtype=np.float64)) for c, m in cents.items() if c in anchors}
    return {"per_class": per, "mean": float(np.mean(list(per.values()))) if per else float("nan")}


def expected_anchor(probs: ArrayLike, class_labels: Sequence[str],
                    anchors: Mapping[str, Sequence[float]]) -> np.ndarray:
    """Probability-weighted mean of the class anchors: a reducer-free (valence, arousal) estimate."""
    table = np.asarray([anchors[c] for c in class_labels], dtype=np.float64)
    return np.asarray(probs, dtype=np.float64) @ table


def restricted_predictions(probs: ArrayLike, class_labels: Sequence[str], allowed: Sequence[str]) -> np.ndarray:
    """Arg-max over the classes in ``allowed`` only (a test corpus's own label set)."""
    names = list(class_labels)
    cols = [names.index(c) for c in allowed if c in names]
    predicted: np.ndarray = np.asarray([names[c] for c in cols])[np.argmax(np.asarray(probs)[:, cols], axis=1)]
    return predicted
