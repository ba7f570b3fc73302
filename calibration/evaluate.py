"""Evaluate a fitted reducer: metrics as JSON, the circumplex as PNG.

Library: :func:`evaluate_points` (metrics of points already on the plane),
:func:`evaluate_reducer` (transform embeddings, then score them),
:func:`plot_circumplex`. CLI: ``python -m calibration.evaluate --help``; it
scores a bundle's reducer on an exported-embedding file. Scoring a bundle on
audio runs the Stage I model, a layer above: ``python -m training score``.

Metrics (see ``calibration.metrics``): CCC against dimensional labels where
the corpus has them; anchor agreement (CCC against the anchor of each true
category); head UAR / WA where predictions are known; circular order of class
centroids vs anchors (Fisher-Lee correlation, mean absolute angular error);
centroid drift from anchors; the intensity check (strong vs normal arousal);
Mahalanobis separation of class Gaussians.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from calibration import metrics as M
from calibration.anchors import get_anchor_set
from calibration.jsonable import to_jsonable

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

    from calibration.reducer import AnchoredReducer

DEFAULT_OUT = Path("out") / "calibration-eval"


def evaluate_points(
    points: ArrayLike,
    labels: ArrayLike,
    anchors: Mapping[str, Sequence[float]],
    *,
    pred: ArrayLike | None = None,
    valence: ArrayLike | None = None,
    arousal: ArrayLike | None = None,
    intensity: Iterable[object] | None = None,
    speakers: Iterable[object] | None = None,
    sentences: Iterable[object] | None = None,
) -> dict[str, Any]:
    """Every metric for ``points`` [n, 2] = (valence, arousal) with true ``labels``.

    Metrics whose inputs are missing come back as None (not zero), so a JSON
    reader can tell "not measured" from "bad".
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    labels = np.asarray(labels, dtype=str)
    if len(points) != len(labels):
        raise ValueError(f"{len(points)} points but {len(labels)} labels")
    missing = sorted(set(labels.tolist()) - set(anchors))
    if missing:
        raise KeyError(f"no anchor for label(s) {missing}")
    classes = sorted(set(labels.tolist()))
    out: dict[str, Any] = {
        "n": int(len(points)),
        "classes": classes,
        "class_counts": {c: int(np.sum(labels == c)) for c in classes},
        "anchor_agreement": M.anchor_agreement(points, labels, anchors),
        "circular_order": M.circular_order(points, labels, anchors),
        "centroid_drift": M.centroid_drift(points, labels, anchors),
        "centroids": {c: [float(v) for v in m] for c, m in M.class_centroids(points, labels).items()},
        "separation": M.mahalanobis_separation(points, labels),
        "ccc_labels": None,
        "head": None,
        "intensity": None,
    }
    dims: dict[str, float | int] = {}
    for name, col, target in (("valence", 0, valence), ("arousal", 1, arousal)):
        if target is None:
            continue
        t = np.asarray(target, dtype=np.float64)
        ok = np.isfinite(t)
        if ok.sum() >= 2:
            dims[name] = M.ccc(points[ok, col], t[ok])
            dims[f"n_{name}"] = int(ok.sum())
    if dims:
        out["ccc_labels"] = dims
    if pred is not None:
        pred = np.asarray(pred, dtype=str)
        out["head"] = {"uar": M.uar(labels, pred), "wa": M.weighted_accuracy(labels, pred)}
    if intensity is not None and speakers is not None and sentences is not None:
        check = M.intensity_check(points[:, 1], intensity, speakers, sentences, labels)
        if check["n_pairs"] > 0:
            out["intensity"] = check
    return out


def evaluate_reducer(reducer: AnchoredReducer, data: Mapping[str, np.ndarray], method: str = "fast",
                     anchors: Mapping[str, Sequence[float]] | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """Transform ``data["embeddings"]`` with ``reducer`` and score the points.

    ``data`` is an exported-embedding dict (``calibration.data``). Anchors
    default to the reducer's own, completed from the full table for labels it
    was not fitted on.
    """
    from calibration.data import head_predictions

    if anchors is None:
        anchors = {**dict(get_anchor_set("all").anchors), **reducer.anchors_}
    points = reducer.transform(data["embeddings"], method=method)
    result = evaluate_points(
        points,
        data["labels"],
        anchors,
        pred=head_predictions(data),
        valence=data.get("valence"),
        arousal=data.get("arousal"),
        intensity=data.get("intensity"),
        speakers=data.get("speakers"),
        sentences=data.get("sentence"),
    )
    result["method"] = method
    result["reducer"] = {"align": reducer.align, "mode": reducer.mode, "train_drift": reducer.drift_}
    return result, points


# ------------------------------------------------------------------ plotting
def draw_circumplex(ax: Axes, points: ArrayLike, labels: ArrayLike, anchors: Mapping[str, Sequence[float]],
                    title: str | None = None, max_points: int = 4000, seed: int = 0) -> None:
    """Points, anchors, class centroids and 1-sigma covariance ellipses on one axes."""
    import matplotlib
    from matplotlib.patches import Circle, Ellipse

    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    labels = np.asarray(labels, dtype=str)
    classes = sorted(set(labels.tolist()))
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    ax.add_patch(Circle((0, 0), 1.0, fill=False, color="0.8", lw=1))
    ax.axhline(0, color="0.85", lw=0.8, zorder=0)
    ax.axvline(0, color="0.85", lw=0.8, zorder=0)
    shown = np.arange(len(points))
    if len(points) > max_points:
        shown = np.sort(np.random.default_rng(seed).choice(len(points), max_points, replace=False))
    for i, c in enumerate(classes):
        color = cmap(i % cmap.N)
        p = points[labels == c]
        sel = points[shown][labels[shown] == c]
        ax.scatter(sel[:, 0], sel[:, 1], s=6, color=color, alpha=0.35, linewidths=0)
        mean = p.mean(axis=0)
        if len(p) > 2:
            vals, vecs = np.linalg.eigh(np.cov(p, rowvar=False))
            vals = np.clip(vals, 0, None)
            angle = math.degrees(math.atan2(vecs[1, 1], vecs[0, 1]))
            ax.add_patch(Ellipse(mean, 2 * math.sqrt(vals[1]), 2 * math.sqrt(vals[0]), angle=angle,
                                 fill=False, color=color, lw=1.5))
        ax.plot(*mean, "o", color=color, ms=6, mec="black", mew=0.6)
        if c in anchors:
            a = (float(anchors[c][0]), float(anchors[c][1]))
            ax.plot(*a, "*", color=color, ms=14, mec="black", mew=0.8)
            ax.annotate("", xy=mean, xytext=a, arrowprops={"arrowstyle": "->", "color": color, "lw": 1})
            ax.annotate(c, a, textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xlim(-1.1, 1.1)
    ax.set_ylim(-1.1, 1.1)
    ax.set_aspect("equal")
    ax.set_xlabel("valence")
    ax.set_ylabel("arousal")
    if title:
        ax.set_title(title, fontsize=10)


def plot_circumplex(points: ArrayLike, labels: ArrayLike, anchors: Mapping[str, Sequence[float]],
                    path: str | Path, title: str | None = None) -> Path:
    """Write the circumplex PNG: stars = anchors, dots = class centroids (arrow from
    anchor to centroid = drift), ellipses = 1-sigma class covariance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    draw_circumplex(ax, points, labels, anchors, title=title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------- outputs
def write_report(result: Mapping[str, Any], points: ArrayLike, labels: ArrayLike,
                 anchors: Mapping[str, Sequence[float]], out: str | Path, title: str) -> tuple[Path, Path]:
    """``metrics.json`` and ``circumplex.png`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    js = out / "metrics.json"
    js.write_text(json.dumps(to_jsonable(result), indent=2, sort_keys=True, allow_nan=False) + "\n")
    png = plot_circumplex(points, labels, anchors, out / "circumplex.png", title=title)
    return js, png


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"


def summary_lines(result: Mapping[str, Any]) -> list[str]:
    """A few human-readable lines for the terminal."""
    f = _fmt
    aa, co, dr = result["anchor_agreement"], result["circular_order"], result["centroid_drift"]
    lines = [
        f"n={result['n']}  classes={len(result['classes'])}  method={result.get('method', '?')}",
        f"anchor agreement CCC: valence {f(aa['valence'])}  arousal {f(aa['arousal'])}",
        f"circular order: Fisher-Lee {f(co['fisher_lee'])}  "
        f"mean |angle error| {f(co['mean_abs_angular_error_deg'])} deg",
        f"centroid drift from anchors: mean {f(dr['mean'])}",
        f"Mahalanobis separation: mean {f(result['separation']['mean'])}  min {f(result['separation']['min'])}",
    ]
    if result.get("ccc_labels"):
        c = result["ccc_labels"]
        lines.append(f"CCC vs labels: valence {f(c.get('valence'))}  arousal {f(c.get('arousal'))}")
    if result.get("head"):
        lines.append(f"head: UAR {f(result['head']['uar'])}  WA {f(result['head']['wa'])}")
    if result.get("intensity"):
        i = result["intensity"]
        lines.append(f"intensity: strong > normal arousal in {f(i['share'])} of {i['n_pairs']} pairs")
    return lines


# --------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m calibration.evaluate",
        description="Score a model bundle's arousal-valence reducer on exported embeddings: writes metrics.json "
                    "and circumplex.png. (To score a bundle on a folder of audio: python -m training score.)",
    )
    ap.add_argument("--bundle", type=Path, required=True,
                    help="model bundle folder holding reducer.json + reducer.npz")
    ap.add_argument("--embeddings", type=Path, required=True,
                    help="exported-embedding .npz (embeddings, labels, speakers, split; optional valence, arousal, "
                         "intensity, sentence, pred or probs/probabilities + classes)")
    ap.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                    help="which rows to score (default: test)")
    ap.add_argument("--method", default="fast", choices=["fast", "umap"],
                    help="transform: fast (the streaming path, default) or umap (UMAP's own transform)")
    ap.add_argument("--anchors", default=None,
                    help="anchor set name or .json file for labels the reducer was not fitted on "
                         "(default: the reducer's anchors, completed from the full table)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    ap.add_argument("--title", default=None, help="plot title (default: derived from the inputs)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from calibration.data import load_embeddings, select_split
    from calibration.reducer import JSON_NAME, AnchoredReducer

    bundle, embeddings = Path(args.bundle), Path(args.embeddings)
    problem = None
    if not (bundle / JSON_NAME).is_file():
        problem = (f"{bundle} holds no reducer ({JSON_NAME}): --bundle takes a model bundle folder "
                   "(e.g. monitor/model/bundles/egemaps)")
    elif embeddings.is_dir():
        problem = (f"{embeddings} is a folder: --embeddings takes an exported-embedding .npz file; to score a "
                   "folder of audio (RAVDESS or any other corpus), use python -m training score")
    elif not embeddings.is_file():
        problem = f"no embeddings file {embeddings}"
    if problem is None:
        try:
            reducer = AnchoredReducer.load(bundle)
            data = select_split(load_embeddings(embeddings), args.split)
            source = f"{embeddings.name} [{args.split}]"
            return report(reducer, data, source, args.anchors, args.method, args.out, args.title)
        except (OSError, ValueError, KeyError) as exc:  # unreadable or inconsistent inputs: say which, no traceback
            problem = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    print(f"error: {problem}", file=sys.stderr)
    return 2


def report(reducer: AnchoredReducer, data: Mapping[str, np.ndarray], source: str, anchor_set: str | None,
           method: str, out: Path, title: str | None) -> int:
    """Score, write metrics.json + circumplex.png, print the summary (the CLIs' shared tail)."""
    anchors = {**dict(get_anchor_set(anchor_set or "all").anchors), **reducer.anchors_}
    result, points = evaluate_reducer(reducer, data, method=method, anchors=anchors)
    result["source"] = source
    title = title or f"{source}, {method} transform, align={reducer.align}"
    js, png = write_report(result, points, data["labels"], anchors, out, title)
    for line in summary_lines(result):
        print(line)
    print(f"wrote {js} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
