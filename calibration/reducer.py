"""Stage II: anchored supervised UMAP from emotion embeddings to (valence, arousal).

Supervised UMAP (categorical target) is fitted on the Stage I embeddings with
every training sample initialised at its emotion's Russell & Mehrabian anchor,
so no valence/arousal labels are needed. Fixes over the research code: every
sample is seeded (not the first K left at the origin), the output scaler is
applied on every transform path, seeds make the fit reproducible, and
umap-learn is used as a dependency instead of a vendored fork.

Anchors only enter through the initialisation (which umap rescales to a
[0, 10] box) and the output is min-max scaled per axis, so class centroids end
up off their anchors. ``drift_`` measures that at three stages: "layout" (in
the optimiser's own frame, i.e. what UMAP itself moved), "scaled" (after the
min-max map, what the research method emits) and "output" (after any
alignment). ``align`` maps class centroids back onto the anchors by least
squares, fitted on the training layout or, better, on held-out embeddings
passed as ``fit(X, y, X_align=..., y_align=...)`` (see docs/reducer_ravdess.md).

Two transforms:

* ``method="fast"`` (default, streaming): the membership-weighted average of
  the point's nearest training neighbours, which is exactly how UMAP's own
  transform *initialises* a new point before its short SGD refinement. Pure
  numpy, no numba, so a single row costs well under a millisecond.
* ``method="umap"``: UMAP's transform. In memory it calls umap-learn's
  ``UMAP.transform``. After ``load`` it re-runs the same algorithm from the
  saved arrays with umap-learn's own functions and the same ``transform_seed``
  but *exact* neighbour search; umap-learn also searches exactly below 4096
  training points, so there the two agree up to float rounding, above it
  umap-learn uses an approximate (NN-descent) index.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from calibration.anchors import canonical_emotion, get_anchor_set
from calibration.metrics import centroid_drift
from calibration.safe_npz import read_npz

STATE_FORMAT = "mood-monitor/anchored-reducer"
STATE_VERSION = 1
JSON_NAME = "reducer.json"
NPZ_NAME = "reducer.npz"

#: umap-learn's floor on the neighbour bandwidth, as a share of the mean distance.
_MIN_K_DIST_SCALE = 1e-3

_MODES = ("seed",)
_ALIGNS = (None, "similarity", "affine")
_METHODS = ("fast", "umap")

#: What ``anchors`` may be: {label: (valence, arousal)}, an anchor-set name, a .json path, or None (the full table).
AnchorsLike = Union[Mapping[str, Sequence[float]], str, Path, None]


def resolve_anchors(anchors: AnchorsLike, labels: list[str] | None = None) -> dict[str, tuple[float, float]]:
    """Anchors as {canonical label: (valence, arousal)}.

    ``anchors`` may be a mapping, an anchor-set name, a .json path, or None (the
    full Russell & Mehrabian table). With ``labels`` the result is restricted
    to them and every label must have an anchor.
    """
    if anchors is None:
        anchors = "all"
    if isinstance(anchors, (str, Path)):
        table = dict(get_anchor_set(anchors).anchors)
    elif isinstance(anchors, Mapping):
        table = {canonical_emotion(str(k)): (float(v[0]), float(v[1])) for k, v in anchors.items()}
    else:
        raise TypeError("anchors must be a mapping, an anchor-set name or a .json path, "
                        f"got {type(anchors).__name__}")
    table = {k: (float(v[0]), float(v[1])) for k, v in table.items()}
    if labels is None:
        return table
    missing = sorted(set(labels) - set(table))
    if missing:
        raise ValueError(f"no anchor for label(s) {missing}; anchors given for {sorted(table)}")
    return {lab: table[lab] for lab in labels}


def _similarity_fit(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares rotation + uniform scale + shift (Umeyama 1991), no reflection."""
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = np.mean(np.sum(s0 * s0, axis=1))
    if var_s == 0.0:
        raise ValueError("cannot align: all class centroids coincide")
    cov = d0.T @ s0 / len(src)
    u, sing, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = float(np.sum(sing * d) / var_s)
    matrix = scale * rot
    return matrix, mu_d - matrix @ mu_s


def _affine_fit(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares affine map; needs three non-collinear centroids."""
    if len(src) < 3:
        raise ValueError("affine alignment needs at least 3 classes; use align='similarity'")
    design = np.hstack([src, np.ones((len(src), 1))])
    if np.linalg.matrix_rank(design) < 3:
        raise ValueError("affine alignment needs non-collinear class centroids; use align='similarity'")
    sol, *_ = np.linalg.lstsq(design, dst, rcond=None)
    return sol[:2].T.copy(), sol[2].copy()


def _bandwidths(dists: np.ndarray) -> np.ndarray:
    """Per-row neighbour bandwidth sigma, the one umap-learn's transform uses.

    At transform time umap runs ``smooth_knn_dist`` with local connectivity 0,
    so rho is 0 and sigma solves sum_{j>=1} exp(-d_j / sigma) = log2(k). umap
    bisects (up to 64 passes, tolerance 1e-5); we solve the same equation by
    Newton's method in beta = 1 / sigma, where the left side is convex and
    decreasing, so iterates started left of the root rise monotonically to it
    with no overshoot: 3 passes instead of bisection's 23-24 on the
    embeddings tried, which matters for a single streaming row. The floor uses
    the row's own mean distance (umap uses the batch mean), so a point is placed
    the same (to float rounding) alone or in a batch.
    """
    n, k = dists.shape
    target = math.log2(k)
    rest = dists[:, 1:]
    # Jensen: sum exp(-beta d) >= (k-1) exp(-beta mean d), so this start is left
    # of the root and usually within a few passes of it.
    mean_rest = rest.mean(axis=1)
    beta = np.zeros(n)
    if k > 2:
        beta = np.divide(math.log((k - 1) / target), mean_rest, out=beta, where=mean_rest > 0)
    for _ in range(100):
        e = np.exp(-rest * beta[:, None])
        g = e.sum(axis=1) - target
        slope = (e * rest).sum(axis=1)  # -g'(beta)
        step = np.divide(g, slope, out=np.zeros(n), where=slope > 0)
        beta = beta + step
        if np.all(np.abs(g) < 1e-9) or not np.any(step > 1e-15 * np.maximum(beta, 1e-300)):
            break
    with np.errstate(divide="ignore"):
        sigma = np.where(beta > 0, 1.0 / beta, np.inf)
    floored: np.ndarray = np.maximum(sigma, _MIN_K_DIST_SCALE * dists.mean(axis=1))
    return floored


# scikit-learn ships no type information: its base classes are Any to mypy.
class AnchoredReducer(TransformerMixin, BaseEstimator, auto_wrap_output_keys=None):  # type: ignore[misc, call-arg]
    """Supervised UMAP from emotion embeddings to (valence, arousal) in [-1, 1]^2.

    Parameters
    ----------
    anchors : mapping, str or None
        {canonical label: (valence, arousal)}, an anchor-set name from
        ``calibration.anchors.ANCHOR_SETS``, a .json anchor file, or None for
        the full Russell & Mehrabian table.
    mode : "seed"
        The research method: every sample initialised at its class anchor plus
        N(0, init_noise) noise, categorical supervised UMAP, per-axis min-max
        scaling of the training layout to [-1, 1].
    align : None, "similarity" or "affine"
        After the fit, map class centroids onto their anchors by least squares
        (rotation+scale+shift, or full affine).
    n_neighbors, min_dist, target_weight, n_epochs, negative_sample_rate,
    learning_rate, repulsion_strength :
        Passed to ``umap.UMAP`` (defaults are the research code's).
    init_noise : float
        Standard deviation of the Gaussian noise added to the anchor init.
    fast_neighbors : int or None
        Neighbours used by the fast transform (None: ``n_neighbors``, as UMAP's
        transform uses).
    fast_max_reference : int
        Cap on training points searched by the fast transform (a class-
        stratified subsample above it) so a single row stays within budget.
    clip : bool
        Clip outputs to [-1, 1] (the heat map's domain).
    transform_seed : int
        Seed of UMAP's transform (umap-learn's default is 42).
    random_state : int, RandomState or None
        Seeds the init noise and UMAP; an int makes the fit reproducible (and
        single-threaded, as umap-learn requires).
    n_jobs : int
        UMAP threads when ``random_state`` is None.
    verbose : bool
        Let umap-learn print progress.
    """

    # Fitted state (set by ``fit`` or ``from_state``; absent before, as scikit-learn's ``check_is_fitted`` expects).
    anchors_: dict[str, tuple[float, float]]
    classes_: np.ndarray
    umap_: Any  # the in-memory umap.UMAP after fit; None after load
    n_features_in_: int
    X_train_: NDArray[np.float32]
    y_train_: NDArray[np.int64]
    layout_: NDArray[np.float32]
    embedding_: NDArray[np.float64]
    umap_a_: float
    umap_b_: float
    input_hash_: str
    init_min_: np.ndarray
    init_max_: np.ndarray
    scale_min_: np.ndarray
    scale_max_: np.ndarray
    align_matrix_: np.ndarray
    align_offset_: np.ndarray
    align_source_: str | None
    drift_: dict[str, Any]
    ref_index_: NDArray[np.int64]
    ref_out_: NDArray[np.float64]
    ref_X_: NDArray[np.float32]
    ref_sqnorm_: np.ndarray
    fast_k_: int

    def __init__(
        self,
        anchors: AnchorsLike = None,
        mode: str = "seed",
        align: str | None = None,
        n_neighbors: int = 20,
        min_dist: float = 0.1,
        target_weight: float = 0.1,
        n_epochs: int | None = 150,
        negative_sample_rate: int = 10,
        learning_rate: float = 0.01,
        repulsion_strength: float = 0.1,
        init_noise: float = 0.01,
        fast_neighbors: int | None = None,
        fast_max_reference: int = 4096,
        clip: bool = True,
        transform_seed: int = 42,
        random_state: int | np.random.RandomState | None = None,
        n_jobs: int = -1,
        verbose: bool = False,
    ) -> None:
        self.anchors = anchors
        self.mode = mode
        self.align = align
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.target_weight = target_weight
        self.n_epochs = n_epochs
        self.negative_sample_rate = negative_sample_rate
        self.learning_rate = learning_rate
        self.repulsion_strength = repulsion_strength
        self.init_noise = init_noise
        self.fast_neighbors = fast_neighbors
        self.fast_max_reference = fast_max_reference
        self.clip = clip
        self.transform_seed = transform_seed
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.verbose = verbose

    # ------------------------------------------------------------------ fit
    def _check_params(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {self.mode!r}")
        if self.align not in _ALIGNS:
            raise ValueError(f"align must be one of {_ALIGNS}, got {self.align!r}")
        if int(self.n_neighbors) < 2:
            raise ValueError("n_neighbors must be >= 2")
        if self.fast_neighbors is not None and int(self.fast_neighbors) < 2:
            raise ValueError("fast_neighbors must be >= 2")
        if int(self.fast_max_reference) < 2:
            raise ValueError("fast_max_reference must be >= 2")

    def _seeds(self) -> tuple[np.random.Generator, int | None]:
        """(generator for the init noise, umap random_state)."""
        rs = self.random_state
        if rs is None:
            return np.random.default_rng(), None
        if isinstance(rs, (int, np.integer)):
            return np.random.default_rng(int(rs)), int(rs)
        if isinstance(rs, np.random.RandomState):
            seed = int(rs.randint(0, 2**31 - 1))
            return np.random.default_rng(seed), seed
        raise TypeError(f"random_state must be None, an int or a RandomState, got {type(rs).__name__}")

    def initial_layout(self, codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Every sample at its class anchor plus N(0, init_noise) noise.

        Vectorised over all samples: the research loop left the first K
        samples at (0, 0).
        """
        table = np.asarray([self.anchors_[c] for c in self.classes_], dtype=np.float64)
        layout: np.ndarray = table[codes] + rng.normal(0.0, float(self.init_noise), size=(len(codes), 2))
        return layout

    #: an alignment that stretches the unit layout more than this is warned about (points pile up on the clip edge)
    MAX_ALIGN_STRETCH = 2.0

    def fit(self, X: ArrayLike, y: ArrayLike, X_align: ArrayLike | None = None,
            y_align: ArrayLike | None = None) -> AnchoredReducer:
        """Fit UMAP on embeddings ``X`` [n, d] with canonical emotion labels ``y``.

        ``X_align``/``y_align`` (optional, only with ``align``): held-out
        embeddings, e.g. the validation split, whose class centroids the
        alignment is fitted on instead of the training centroids.
        """
        self._check_params()
        X_fit, y_fit, classes = self._check_training_data(X, y)
        self.anchors_ = resolve_anchors(self.anchors, classes)
        self.classes_ = np.asarray(classes, dtype=str)
        codes = np.searchsorted(self.classes_, y_fit)
        rng, umap_seed = self._seeds()
        init = self.initial_layout(codes, rng)
        reducer = self._fit_umap(X_fit, codes, init, umap_seed)

        self.umap_ = reducer
        self.n_features_in_ = X_fit.shape[1]
        self.X_train_ = X_fit
        self.y_train_ = codes.astype(np.int64)
        self.layout_ = np.asarray(reducer.embedding_, dtype=np.float32)
        self.umap_a_ = float(reducer._a)
        self.umap_b_ = float(reducer._b)
        self.input_hash_ = str(reducer._input_hash)
        self.init_min_ = init.min(axis=0)
        self.init_max_ = init.max(axis=0)

        # Output map: per-axis min-max of the training layout to [-1, 1] ...
        self.scale_min_ = self.layout_.min(axis=0).astype(np.float64)
        self.scale_max_ = self.layout_.max(axis=0).astype(np.float64)
        self.align_matrix_ = np.eye(2)
        self.align_offset_ = np.zeros(2)
        self._build_fast_index(rng)
        scaled = self._to_output(self.layout_, clip=False)
        labels = self.classes_[codes]
        # ... then optionally a least-squares map of class centroids onto anchors,
        # estimated on held-out embeddings when given (training centroids are
        # in-sample for both Stage I and UMAP, so they sit closer to the anchors
        # than new speech will).
        self.align_source_ = None
        if self.align is not None:
            self._fit_alignment(classes, scaled, labels, X_align, y_align)
        elif X_align is not None:
            raise ValueError("X_align given but align is None")
        unclipped = self._to_output(self.layout_, clip=False)
        self.embedding_ = np.clip(unclipped, -1.0, 1.0) if self.clip else unclipped

        # Drift in the optimiser's own frame: umap rescales the init into a
        # [0, 10] box, so undo that box to compare centroids with anchors.
        span = np.where(self.init_max_ > self.init_min_, self.init_max_ - self.init_min_, 1.0)
        layout_in_anchor_units = self.layout_.astype(np.float64) / 10.0 * span + self.init_min_
        self.drift_ = {
            "layout": centroid_drift(layout_in_anchor_units, labels, self.anchors_),
            "scaled": centroid_drift(scaled, labels, self.anchors_),
            "output": centroid_drift(self.embedding_, labels, self.anchors_),
        }
        return self

    def _check_training_data(self, X: ArrayLike, y: ArrayLike) -> tuple[NDArray[np.float32], np.ndarray, list[str]]:
        """Contiguous float32 embeddings, canonical labels and the sorted classes, or a ValueError saying why not."""
        X_fit = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
        if X_fit.ndim != 2:
            raise ValueError(f"X must be 2-d [n, d], got shape {X_fit.shape}")
        if not np.all(np.isfinite(X_fit)):
            raise ValueError("X contains NaN or infinite values")
        y_fit = np.asarray([canonical_emotion(str(v)) for v in np.asarray(y).ravel()])
        if len(y_fit) != len(X_fit):
            raise ValueError(f"X has {len(X_fit)} rows but y has {len(y_fit)} labels")
        classes = sorted(set(y_fit.tolist()))
        if len(classes) < 2:
            raise ValueError("need at least two emotion classes to fit")
        n_neighbors = int(self.n_neighbors)
        if len(X_fit) <= n_neighbors:
            raise ValueError(f"need more than n_neighbors={n_neighbors} samples, got {len(X_fit)}")
        return X_fit, y_fit, classes

    def _fit_umap(self, X: NDArray[np.float32], codes: np.ndarray, init: np.ndarray, umap_seed: int | None) -> Any:
        """umap-learn's supervised UMAP fitted from the anchor layout (umap-learn is untyped: an ``umap.UMAP``)."""
        import umap  # heavy import (numba); only the fit and the UMAP transform need it

        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=int(self.n_neighbors),
            min_dist=float(self.min_dist),
            metric="euclidean",
            target_metric="categorical",
            target_weight=float(self.target_weight),
            n_epochs=None if self.n_epochs is None else int(self.n_epochs),
            negative_sample_rate=int(self.negative_sample_rate),
            learning_rate=float(self.learning_rate),
            repulsion_strength=float(self.repulsion_strength),
            init=init,
            random_state=umap_seed,
            transform_seed=int(self.transform_seed),
            n_jobs=1 if umap_seed is not None else int(self.n_jobs),
            verbose=bool(self.verbose),
        )
        with warnings.catch_warnings():
            # umap warns that a seeded run is single-threaded; that is the point.
            warnings.filterwarnings("ignore", message=".*n_jobs value.*")
            reducer.fit(X, codes)
        return reducer

    def _fit_alignment(self, classes: list[str], scaled: np.ndarray, labels: np.ndarray,
                       X_align: ArrayLike | None, y_align: ArrayLike | None) -> None:
        """Map class centroids (held-out ones when given, else the training layout's) onto their anchors."""
        if X_align is not None:
            if y_align is None:
                raise ValueError("X_align needs y_align")
            src_labels = np.asarray([canonical_emotion(str(v)) for v in np.asarray(y_align).ravel()])
            src_points = self._transform_fast(X_align)
            if len(src_labels) != len(src_points):
                raise ValueError(f"X_align has {len(src_points)} rows but y_align has {len(src_labels)} labels")
            self.align_source_ = f"held-out ({len(src_labels)} points)"
        else:
            src_points, src_labels = scaled, labels
            self.align_source_ = "training"
        used = [c for c in classes if np.any(src_labels == c)]
        if len(used) < 2:
            raise ValueError("alignment needs at least two classes present in its data")
        cents = np.stack([src_points[src_labels == c].mean(axis=0) for c in used])
        fit_map = _similarity_fit if self.align == "similarity" else _affine_fit
        self.align_matrix_, self.align_offset_ = fit_map(cents, np.asarray([self.anchors_[c] for c in used]))
        self.ref_out_ = self._to_output(self.layout_[self.ref_index_], clip=False)
        stretch = float(np.linalg.svd(self.align_matrix_, compute_uv=False)[0])
        if stretch > self.MAX_ALIGN_STRETCH:
            warnings.warn(f"the {self.align} alignment stretches the layout {stretch:.1f}x along one direction: "
                          "many points will be clipped onto the [-1, 1] boundary (see calibration.metrics."
                          "boundary_share); align on more speakers, use align='similarity', or none",
                          stacklevel=3)  # the caller of fit

    def _build_fast_index(self, rng: np.random.Generator) -> None:
        n = len(self.X_train_)
        cap = int(self.fast_max_reference)
        if n <= cap:
            index = np.arange(n)
        else:
            # Class-stratified subsample keeps every class's share of the search set.
            parts = []
            for code in range(len(self.classes_)):
                members = np.flatnonzero(self.y_train_ == code)
                take = max(1, int(round(cap * len(members) / n)))
                parts.append(rng.choice(members, size=min(take, len(members)), replace=False))
            index = np.sort(np.concatenate(parts))
        self.ref_index_ = index.astype(np.int64)
        self.ref_out_ = self._to_output(self.layout_[index], clip=False)
        self._set_fast_arrays()

    def _set_fast_arrays(self) -> None:
        """Derived search arrays (deterministic functions of the saved state)."""
        self.ref_X_ = np.ascontiguousarray(self.X_train_[self.ref_index_])
        self.ref_sqnorm_ = np.einsum("ij,ij->i", self.ref_X_, self.ref_X_)
        k = self.n_neighbors if self.fast_neighbors is None else self.fast_neighbors
        self.fast_k_ = int(min(int(k), len(self.ref_index_)))

    def fit_transform(self, X: ArrayLike, y: ArrayLike | None = None, **fit_params: Any) -> NDArray[np.float64]:
        """Fit and return the training layout in output coordinates (``embedding_``)."""
        if y is None:
            raise ValueError("AnchoredReducer is supervised: fit_transform needs labels y")
        embedding: NDArray[np.float64] = self.fit(X, y, **fit_params).embedding_.copy()
        return embedding

    # ------------------------------------------------------------ transform
    def _to_output(self, layout: np.ndarray, clip: bool | None = None) -> NDArray[np.float64]:
        """UMAP coordinates -> (valence, arousal): min-max to [-1, 1], align, clip."""
        span = self.scale_max_ - self.scale_min_
        span = np.where(span > 0, span, 1.0)
        scaled = 2.0 * (np.asarray(layout, dtype=np.float64) - self.scale_min_) / span - 1.0
        out: NDArray[np.float64] = scaled @ self.align_matrix_.T + self.align_offset_
        if self.clip if clip is None else clip:
            np.clip(out, -1.0, 1.0, out=out)
        return out

    def transform(self, X: ArrayLike, method: str = "fast") -> NDArray[np.float64]:
        """Place embeddings ``X`` [n, d] (or one [d] row) on the circumplex: [n, 2] (valence, arousal)."""
        if method == "fast":
            if not hasattr(self, "ref_out_"):  # cheaper than check_is_fitted on the streaming path
                raise NotFittedError("This AnchoredReducer instance is not fitted yet; call fit first.")
            return self._transform_fast(X)
        if method == "umap":
            check_is_fitted(self, "ref_out_")
            return self._transform_umap(X)
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")

    def _as_rows(self, X: ArrayLike) -> NDArray[np.float32]:
        rows = np.asarray(X, dtype=np.float32)
        if rows.ndim == 1:
            rows = rows[None, :]
        if rows.ndim != 2 or rows.shape[1] != self.n_features_in_:
            raise ValueError(f"expected embeddings with {self.n_features_in_} features, got shape {rows.shape}")
        if not np.isfinite(rows).all():
            raise ValueError("embeddings contain NaN or infinite values")
        return rows

    def _transform_fast(self, X: ArrayLike, chunk: int = 512) -> NDArray[np.float64]:
        """Membership-weighted mean of the nearest training points' output coordinates."""
        rows = self._as_rows(X)
        n = rows.shape[0]
        if n <= chunk:
            return self._fast_block(rows)
        return np.concatenate([self._fast_block(rows[i:i + chunk]) for i in range(0, n, chunk)])

    def _fast_block(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        ref = self.ref_X_
        k = self.fast_k_
        m = ref.shape[0]
        # Float32 squared distances (up to |x|^2) to shortlist the k nearest ...
        if X.shape[0] == 1:
            # einsum's own single-threaded loop, not BLAS: a threaded sgemv stalls
            # for a whole scheduler slice when the other core is busy.
            d2 = (self.ref_sqnorm_ - 2.0 * np.einsum("md,d->m", ref, X[0]))[None, :]
        else:
            d2 = self.ref_sqnorm_[None, :] - 2.0 * (X @ ref.T)
        if k < m:
            idx = np.argpartition(d2, k - 1, axis=1)[:, :k]
        else:
            idx = np.broadcast_to(np.arange(m), (X.shape[0], m)).copy()
        # ... then exact float64 distances for those k, sorted.
        diff = ref[idx].astype(np.float64) - X[:, None, :].astype(np.float64)
        dists = np.sqrt(np.einsum("nkd,nkd->nk", diff, diff))
        order = np.argsort(dists, axis=1, kind="stable")
        dists = np.take_along_axis(dists, order, axis=1)
        idx = np.take_along_axis(idx, order, axis=1)

        sigma = _bandwidths(dists)
        weights = np.exp(-dists / sigma[:, None])
        weights[dists <= 0.0] = 1.0
        total = weights.sum(axis=1, keepdims=True)
        out: NDArray[np.float64] = np.einsum("nk,nkc->nc", weights / total, self.ref_out_[idx])
        # A point that coincides with a training point takes its place, as in umap.
        exact = dists[:, 0] <= 0.0
        if exact.any():
            out[exact] = self.ref_out_[idx[exact, 0]]
        if self.clip:
            np.clip(out, -1.0, 1.0, out=out)
        return out

    def _transform_umap(self, X: ArrayLike) -> NDArray[np.float64]:
        rows = self._as_rows(X)
        if getattr(self, "umap_", None) is not None:
            layout = self.umap_.transform(rows)
        else:
            layout = self._umap_transform_rebuilt(rows)
        return self._to_output(layout)

    def _umap_transform_rebuilt(self, X: NDArray[np.float32]) -> np.ndarray:
        """UMAP.transform's algorithm from the saved arrays (exact neighbours); see module doc."""
        import joblib
        import scipy.sparse
        from sklearn.metrics import pairwise_distances
        from sklearn.metrics.pairwise import euclidean_distances
        from umap.distances import named_distances
        from umap.layouts import optimize_layout_euclidean
        from umap.umap_ import (
            INT32_MAX,
            INT32_MIN,
            compute_membership_strengths,
            init_graph_transform,
            make_epochs_per_sample,
            smooth_knn_dist,
        )

        X = np.ascontiguousarray(X, dtype=np.float32)
        if joblib.hash(X) == self.input_hash_:
            training_layout: np.ndarray = self.layout_.copy()
            return training_layout
        rng_state = np.random.RandomState(int(self.transform_seed)).randint(INT32_MIN, INT32_MAX, 3)
        rng_state = rng_state.astype(np.int64)
        train = self.X_train_
        k = int(min(int(self.n_neighbors), len(train) - 1))
        indices = np.empty((len(X), k), dtype=np.int64)
        dists = np.empty((len(X), k), dtype=np.float32)
        small = len(train) < 4096  # umap-learn's own switch to exact search
        for s in range(0, len(X), 256):
            if small:
                # The very call umap-learn makes below 4096 points, so distances match bit for bit.
                dm = pairwise_distances(X[s:s + 256], train, metric=named_distances["euclidean"])
            else:
                dm = euclidean_distances(X[s:s + 256], train)
            part = np.argpartition(dm, k, axis=1)[:, :k]
            short = np.take_along_axis(dm, part, axis=1)
            order = np.argsort(short, axis=1)
            indices[s:s + 256] = np.take_along_axis(part, order, axis=1)
            dists[s:s + 256] = np.take_along_axis(short, order, axis=1)
        sigmas, rhos = smooth_knn_dist(dists, float(k), local_connectivity=0.0)
        rows, cols, vals, _ = compute_membership_strengths(indices, dists, sigmas, rhos, bipartite=True)
        graph = scipy.sparse.coo_matrix((vals, (rows, cols)), shape=(len(X), len(train)))
        csr = graph.tocsr()
        csr.eliminate_zeros()
        embedding = init_graph_transform(csr, self.layout_)
        if self.n_epochs is None:
            n_epochs = 100 if graph.shape[0] <= 10000 else 30
        else:
            n_epochs = int(int(self.n_epochs) // 3.0)
        graph.data[graph.data < (graph.data.max() / float(n_epochs))] = 0.0
        graph.eliminate_zeros()
        epochs_per_sample = make_epochs_per_sample(graph.data, n_epochs)
        layout: np.ndarray = optimize_layout_euclidean(
            embedding,
            self.layout_.astype(np.float32, copy=True),
            graph.row,
            graph.col,
            n_epochs,
            graph.shape[1],
            epochs_per_sample,
            self.umap_a_,
            self.umap_b_,
            rng_state,
            float(self.repulsion_strength),
            float(self.learning_rate) / 4.0,
            float(self.negative_sample_rate),
            self.random_state is None,
            verbose=False,
            tqdm_kwds={"disable": True},
        )
        return layout

    def get_feature_names_out(self, input_features: object = None) -> NDArray[np.object_]:
        return np.asarray(["valence", "arousal"], dtype=object)

    def warm_up(self, n: int = 20) -> "AnchoredReducer":
        """Run the fast path a few times so caches and BLAS threads are hot."""
        x = self.X_train_[self.ref_index_[0]]
        for _ in range(n):
            self.transform(x[None, :])
        return self

    # -------------------------------------------------------------- state
    def _json_params(self) -> dict[str, Any]:
        params: dict[str, Any] = self.get_params(deep=False)
        anchors = params["anchors"]
        if isinstance(anchors, Mapping):
            params["anchors"] = {str(k): [float(v[0]), float(v[1])] for k, v in anchors.items()}
        elif isinstance(anchors, Path):
            params["anchors"] = str(anchors)
        rs = params["random_state"]
        params["random_state"] = int(rs) if isinstance(rs, (int, np.integer)) else None
        return params

    def _state_arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            "X_train": self.X_train_,
            "y_train": self.y_train_,
            "layout": self.layout_,
            "embedding": self.embedding_,
            "ref_index": self.ref_index_,
            "ref_out": self.ref_out_,
            "scale_min": self.scale_min_,
            "scale_max": self.scale_max_,
            "align_matrix": self.align_matrix_,
            "align_offset": self.align_offset_,
            "init_min": self.init_min_,
            "init_max": self.init_max_,
            "umap_ab": np.array([self.umap_a_, self.umap_b_], dtype=np.float64),
        }
        return {k: np.ascontiguousarray(v) for k, v in arrays.items()}

    def fingerprint(self) -> str:
        """SHA-256 of the parameters and fitted arrays: equal exactly when two reducers place points alike.

        Numpy only (no umap import), so the runtime can afford it at start-up.
        """
        import hashlib

        check_is_fitted(self, "ref_out_")
        digest = hashlib.sha256(json.dumps(self._json_params(), sort_keys=True).encode())
        for key, value in sorted(self._state_arrays().items()):
            digest.update(f"{key}{value.dtype}{value.shape}".encode())
            digest.update(value.tobytes())
        return digest.hexdigest()

    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-able parameters and metadata, plus numpy arrays; no pickle anywhere."""
        check_is_fitted(self, "ref_out_")
        import umap

        meta = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "params": self._json_params(),
            "classes": [str(c) for c in self.classes_],
            "anchors": {c: [float(v), float(a)] for c, (v, a) in self.anchors_.items()},
            "output_columns": ["valence", "arousal"],
            "n_features_in": int(self.n_features_in_),
            "n_train": int(len(self.X_train_)),
            "fast_k": int(self.fast_k_),
            "input_hash": self.input_hash_,
            "drift": self.drift_,
            "align_source": self.align_source_,
            "umap_learn_version": umap.__version__,
        }
        return meta, self._state_arrays()

    @classmethod
    def from_state(cls, params: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> "AnchoredReducer":
        """A fitted reducer from ``to_state``'s output; the fast transform is bit-identical."""
        if params.get("format") != STATE_FORMAT:
            raise ValueError(f"not an anchored-reducer state (format={params.get('format')!r})")
        if int(params.get("version", -1)) > STATE_VERSION:
            raise ValueError(f"reducer state version {params['version']} is newer than this code ({STATE_VERSION})")
        self = cls(**params["params"])
        self.classes_ = np.asarray(params["classes"], dtype=str)
        self.anchors_ = {c: (float(v[0]), float(v[1])) for c, v in params["anchors"].items()}
        self.n_features_in_ = int(params["n_features_in"])
        self.input_hash_ = str(params["input_hash"])
        self.drift_ = params["drift"]
        self.align_source_ = params.get("align_source")
        self.umap_ = None
        a = {k: np.asarray(v) for k, v in arrays.items()}
        self.X_train_ = np.ascontiguousarray(a["X_train"], dtype=np.float32)
        self.y_train_ = a["y_train"].astype(np.int64)
        self.layout_ = np.ascontiguousarray(a["layout"], dtype=np.float32)
        self.embedding_ = a["embedding"].astype(np.float64)
        self.ref_index_ = a["ref_index"].astype(np.int64)
        self.ref_out_ = np.ascontiguousarray(a["ref_out"], dtype=np.float64)
        self.scale_min_ = a["scale_min"].astype(np.float64)
        self.scale_max_ = a["scale_max"].astype(np.float64)
        self.align_matrix_ = a["align_matrix"].astype(np.float64)
        self.align_offset_ = a["align_offset"].astype(np.float64)
        self.init_min_ = a["init_min"].astype(np.float64)
        self.init_max_ = a["init_max"].astype(np.float64)
        self.umap_a_, self.umap_b_ = (float(v) for v in a["umap_ab"])
        self._set_fast_arrays()
        if self.fast_k_ != int(params["fast_k"]):
            raise ValueError("inconsistent reducer state: fast_k does not match the saved reference set")
        return self

    def save(self, folder: str | Path) -> Path:
        """Write ``reducer.json`` and ``reducer.npz`` into ``folder`` (created if needed)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta, arrays = self.to_state()
        np.savez(folder / NPZ_NAME, allow_pickle=False, **arrays)
        (folder / JSON_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "AnchoredReducer":
        """Read a reducer written by ``save`` (JSON + npz, never pickle)."""
        folder = Path(folder)
        meta = json.loads((folder / JSON_NAME).read_text())
        return cls.from_state(meta, read_npz(folder / NPZ_NAME))
