"""Stage II on real embeddings: RAVDESS, split by actor, with and without alignment.

Pipeline (everything offline): eGeMAPSv02 functionals per file (openSMILE,
cached under .cache/ by ravdess_features.py) -> z-score with the training
fold's statistics -> a small torch head Linear(88->100)-tanh-Linear(100->8)
trained with class-weighted cross entropy -> its 100-d bottleneck is the
emotion embedding -> AnchoredReducer fitted on the training actors' embeddings
-> every metric of calibration.evaluate on the held-out actors.

Four folds of six actors (three women, three men each). For test fold f the
validation fold is f+1 (mod 4) and the other twelve actors train both the
head and the reducer; the validation actors only serve the alignment variants
that fit their map on held-out centroids. Each utterance is scored once, by
the fold that tests its actor.

Writes docs/benchmarks/ravdess_reducer.json, docs/benchmarks/ravdess_reducer.png
and the results section of docs/reducer_ravdess.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from calibration import metrics as M
from calibration.anchors import ANCHOR_SETS
from calibration.data import parse_ravdess_name
from calibration.evaluate import draw_circumplex, evaluate_points
from calibration.jsonable import to_jsonable
from calibration.reducer import AnchoredReducer

# Sibling scripts: ``python benchmarks/ravdess_reducer_eval.py`` puts this folder on the import path.
from bench_reducer import write_marked_section
from ravdess_features import DEFAULT_CACHE, DEFAULT_DATA, extract

REPO = Path(__file__).resolve().parents[1]

START, END = "<!-- results:start -->", "<!-- results:end -->"
#: (align, centroids the alignment is fitted on)
VARIANTS = ((None, None), ("similarity", "train"), ("affine", "train"), ("similarity", "val"), ("affine", "val"))
METHODS = ("fast", "umap")
ANCHORS = dict(ANCHOR_SETS["ravdess"].anchors)


def actor_folds(speakers: np.ndarray, n_folds: int) -> np.ndarray:
    """Fold of every row: actor pairs (2k+1, 2k+2) -> fold k mod n, so each fold has as many women as men."""
    actor = np.array([int(s.replace("actor", "")) for s in speakers])
    return ((actor - 1) // 2) % n_folds


def train_head(Z: np.ndarray, y: np.ndarray, classes: list[str], seed: int, epochs: int):
    """Linear(d->100)-tanh-Linear(100->C), full-batch AdamW, class-weighted cross entropy."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    codes = torch.as_tensor(np.searchsorted(classes, y))
    x = torch.as_tensor(Z, dtype=torch.float32)
    counts = torch.bincount(codes, minlength=len(classes)).float()
    weight = counts.sum() / (len(classes) * counts)
    embed = nn.Sequential(nn.Dropout(0.1), nn.Linear(Z.shape[1], 100), nn.Tanh())
    classify = nn.Sequential(nn.Dropout(0.3), nn.Linear(100, len(classes)))
    params = list(embed.parameters()) + list(classify.parameters())
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=1e-2)
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    embed.train()
    classify.train()
    for _ in range(epochs):
        opt.zero_grad()
        loss = loss_fn(classify(embed(x)), codes)
        loss.backward()
        opt.step()
    embed.eval()
    classify.eval()

    def run(Zn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            e = embed(torch.as_tensor(Zn, dtype=torch.float32))
            p = torch.softmax(classify(e), dim=1)
        return e.numpy().astype(np.float32), p.numpy().astype(np.float64)

    return run, float(loss.item())


def summarise(per_fold: list[dict]) -> dict:
    """Mean and sd over folds of the headline numbers."""
    keys = {
        "anchor_valence": lambda r: r["anchor_agreement"]["valence"],
        "anchor_arousal": lambda r: r["anchor_agreement"]["arousal"],
        "fisher_lee": lambda r: r["circular_order"]["fisher_lee"],
        "angle_error_deg": lambda r: r["circular_order"]["mean_abs_angular_error_deg"],
        "centroid_drift": lambda r: r["centroid_drift"]["mean"],
        "intensity_share": lambda r: r["intensity"]["share"] if r["intensity"] else float("nan"),
        "mahalanobis_mean": lambda r: r["separation"]["mean"],
        "mahalanobis_min": lambda r: r["separation"]["min"],
    }
    out = {}
    for k, f in keys.items():
        v = np.array([f(r) for r in per_fold], dtype=np.float64)
        out[k] = {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
    return out


def slim(result: dict) -> dict:
    """A per-fold result without the bulky per-pair and per-centroid detail (kept for the pooled results)."""
    out = {k: v for k, v in result.items() if k != "centroids"}
    out["separation"] = {k: v for k, v in result["separation"].items() if k != "pairs"}
    return out


def variant_name(align, on, method=None) -> str:
    base = "seed" if align is None else f"seed+{align}/{on}"
    return base if method is None else f"{base} ({method})"


def results_markdown(res: dict) -> str:
    f3 = lambda x: "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"  # noqa: E731
    lines = [
        "Held-out (test) actors, pooled over the 4 folds (each utterance scored once); in brackets the sd over "
        "folds. `seed+affine/val` = affine alignment fitted on the validation actors' centroids; `/train` = on "
        "the training layout's centroids.",
        "",
        "| variant | anchor CCC valence | anchor CCC arousal | Fisher-Lee | mean abs angle error (deg) "
        "| centroid drift | intensity: strong > normal | Mahalanobis mean / min |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = [variant_name(a, o, m) for m in METHODS for a, o in VARIANTS] + list(res["baselines_pooled"])
    for name in order:
        pooled = res["pooled"].get(name) or res["baselines_pooled"][name]
        fold = res["fold_summary"].get(name) or res["baseline_fold_summary"][name]

        def sd(k: str, fold: dict = fold) -> str:
            return f" ({fold[k]['sd']:.3f})"

        i = pooled["intensity"]
        lines.append(
            f"| {name} | {f3(pooled['anchor_agreement']['valence'])}{sd('anchor_valence')} "
            f"| {f3(pooled['anchor_agreement']['arousal'])}{sd('anchor_arousal')} "
            f"| {f3(pooled['circular_order']['fisher_lee'])}{sd('fisher_lee')} "
            f"| {pooled['circular_order']['mean_abs_angular_error_deg']:.1f}{sd('angle_error_deg')} "
            f"| {f3(pooled['centroid_drift']['mean'])}{sd('centroid_drift')} "
            f"| {f3(i['share']) if i else 'n/a'} of {i['n_pairs'] if i else 0} "
            f"| {pooled['separation']['mean']:.2f} / {pooled['separation']['min']:.2f} |"
        )
    lines += [
        "",
        "Does alignment raise anchor agreement? Paired per-fold change against `seed` with the same transform "
        "(mean anchor CCC = mean of the valence and arousal CCCs):",
        "",
        "| variant | change in mean anchor CCC, per fold | mean change | change in angle error (deg), mean |",
        "|---|---|---:|---:|",
    ]
    for m in METHODS:
        ref = res["per_fold"][variant_name(None, None, m)]
        for a, o in VARIANTS[1:]:
            cur = res["per_fold"][variant_name(a, o, m)]
            d = [c["anchor_agreement"]["mean"] - r["anchor_agreement"]["mean"] for c, r in zip(cur, ref, strict=True)]
            da = [c["circular_order"]["mean_abs_angular_error_deg"] - r["circular_order"]["mean_abs_angular_error_deg"]
                  for c, r in zip(cur, ref, strict=True)]
            lines.append(f"| {variant_name(a, o, m)} | {', '.join(f'{x:+.3f}' for x in d)} | {np.mean(d):+.3f} "
                         f"| {np.mean(da):+.1f} |")
    head = res["head_pooled"]
    lines += [
        "",
        f"Head (Stage I stand-in) on held-out actors: UAR {head['uar']:.3f}, WA {head['wa']:.3f} "
        f"(per fold UAR {', '.join(f'{u:.3f}' for u in res['head_uar_per_fold'])}; chance 0.125).",
        "CCC against dimensional labels: n/a (RAVDESS has categorical labels only).",
        "",
        "Class-centroid drift from the anchors (Euclidean distance in valence-arousal units, mean over folds). "
        "Training columns use the training actors' own layout; held-out columns the fast transform of the test actors.",
        "",
        "| class | " + " | ".join(res["drift_columns"]) + " |",
        "|---|" + "---:|" * len(res["drift_columns"]),
    ]
    d = res["drift_per_class"]
    for c in sorted(ANCHORS):
        lines.append(f"| {c} | " + " | ".join(f"{d[col][c]:.3f}" for col in res["drift_columns"]) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{np.mean(list(d[col].values())):.3f}**"
                                           for col in res["drift_columns"]) + " |")
    env = res["environment"]
    lines += [
        "",
        f"Fast vs UMAP transform on held-out actors (seed, pooled): CCC valence "
        f"{res['fast_vs_umap_ccc']['valence']:.4f}, arousal {res['fast_vs_umap_ccc']['arousal']:.4f}.",
        f"Run: {res['n_files']} files, {res['n_features']} eGeMAPSv02 functionals, 12 train / 6 val / 6 test actors "
        f"per fold, head {res['head_epochs']} epochs, "
        f"reducer random_state={res['seed']}; {res['total_seconds'] / 60:.1f} min on {env['cpu_count']} shared cores "
        f"(Python {env['python']}, umap-learn {env['umap_learn']}, torch {env['torch']}).",
        "Reproduce: `nice python benchmarks/ravdess_reducer_eval.py` (features are cached in `.cache/`).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help="RAVDESS folder with Actor_XX/ (default: ../shared/data/ravdess from the repo root)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="eGeMAPS feature cache (.npz)")
    ap.add_argument("--folds", type=int, default=4, help="actor folds (default: 4)")
    ap.add_argument("--seed", type=int, default=0, help="seed for the head and the reducer (default: 0)")
    ap.add_argument("--epochs", type=int, default=300, help="head training epochs (default: 300)")
    ap.add_argument("--json", type=Path, default=REPO / "docs" / "benchmarks" / "ravdess_reducer.json")
    ap.add_argument("--png", type=Path, default=REPO / "docs" / "benchmarks" / "ravdess_reducer.png")
    ap.add_argument("--markdown", type=Path, default=REPO / "docs" / "reducer_ravdess.md")
    args = ap.parse_args(argv)

    import torch
    import umap
    from tqdm import tqdm

    torch.set_num_threads(1)
    t_all = time.perf_counter()
    feats = extract(args.data, args.cache)
    F = feats["features"].astype(np.float64)
    meta = [parse_ravdess_name(f) for f in feats["files"]]
    y = np.asarray([m["label"] for m in meta], dtype=str)
    speakers = np.asarray([m["speaker"] for m in meta], dtype=str)
    sentences = np.asarray([m["sentence"] for m in meta], dtype=str)
    intensity = np.asarray([m["intensity"] for m in meta], dtype=str)
    classes = sorted(set(y.tolist()))
    fold_of = actor_folds(speakers, args.folds)
    anchor_table = np.asarray([ANCHORS[c] for c in classes])

    n = len(y)
    points = {variant_name(a, o, m): np.zeros((n, 2)) for a, o in VARIANTS for m in METHODS}
    baselines = {"baseline: expected anchor (head probs)": np.zeros((n, 2)),
                 "baseline: anchor of predicted class": np.zeros((n, 2))}
    pred = np.empty(n, dtype=object)
    per_fold: dict[str, list[dict]] = {k: [] for k in list(points) + list(baselines)}
    head_uar, fold_info = [], []
    drift_cols: dict[str, list[dict]] = {}
    first_train = {}

    def add_drift(col: str, per_class: dict) -> None:
        drift_cols.setdefault(col, []).append(per_class)

    for fold in tqdm(range(args.folds), desc="folds"):
        te = fold_of == fold
        va = fold_of == (fold + 1) % args.folds
        tr = ~te & ~va
        mu, sd = F[tr].mean(axis=0), F[tr].std(axis=0)
        Z = (F - mu) / np.where(sd > 0, sd, 1.0)
        run, loss = train_head(Z[tr], y[tr], classes, seed=args.seed + fold, epochs=args.epochs)
        emb_tr, _ = run(Z[tr])
        emb_va, _ = run(Z[va])
        emb_te, probs_te = run(Z[te])
        pred_te = np.asarray(classes)[probs_te.argmax(axis=1)]
        pred[te] = pred_te
        head_uar.append(M.uar(y[te], pred_te))
        fold_info.append({"fold": fold, "test_actors": sorted(set(speakers[te].tolist())),
                          "val_actors": sorted(set(speakers[va].tolist())),
                          "n_train": int(tr.sum()), "n_val": int(va.sum()), "n_test": int(te.sum()),
                          "head_final_loss": loss, "head_uar": head_uar[-1],
                          "head_wa": M.weighted_accuracy(y[te], pred_te)})
        extra = dict(pred=pred_te, intensity=intensity[te], speakers=speakers[te], sentences=sentences[te])

        for align, on in VARIANTS:
            red = AnchoredReducer(anchors="ravdess", align=align, random_state=args.seed)
            if on == "val":
                red.fit(emb_tr, y[tr], X_align=emb_va, y_align=y[va])
            else:
                red.fit(emb_tr, y[tr])
            base = variant_name(align, on)
            if align is None:
                add_drift("train: optimiser frame", red.drift_["layout"]["per_class"])
                add_drift("train: seed", red.drift_["scaled"]["per_class"])
            else:
                add_drift(f"train: +{align}/{on}", red.drift_["output"]["per_class"])
            if fold == 0:
                first_train[base] = red.embedding_.copy()
            for method in METHODS:
                name = variant_name(align, on, method)
                pts = red.transform(emb_te, method=method)
                points[name][te] = pts
                per_fold[name].append(evaluate_points(pts, y[te], ANCHORS, **extra))
            add_drift("held-out: seed" if align is None else f"held-out: +{align}/{on}",
                      M.centroid_drift(points[variant_name(align, on, "fast")][te], y[te], ANCHORS)["per_class"])
        for name, pts in (("baseline: expected anchor (head probs)", probs_te @ anchor_table),
                          ("baseline: anchor of predicted class", anchor_table[probs_te.argmax(axis=1)])):
            baselines[name][te] = pts
            per_fold[name].append(evaluate_points(pts, y[te], ANCHORS, **extra))

    pred = pred.astype(str)
    common = dict(pred=pred, intensity=intensity, speakers=speakers, sentences=sentences)
    pooled = {k: evaluate_points(v, y, ANCHORS, **common) for k, v in points.items()}
    baselines_pooled = {k: evaluate_points(v, y, ANCHORS, **common) for k, v in baselines.items()}
    drift = {col: {c: float(np.mean([d[c] for d in ds])) for c in sorted(ANCHORS)} for col, ds in drift_cols.items()}
    fs, us = points[variant_name(None, None, "fast")], points[variant_name(None, None, "umap")]
    res = {
        "environment": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                        "umap_learn": umap.__version__, "torch": torch.__version__, "numpy": np.__version__},
        "n_files": int(n),
        "n_features": int(F.shape[1]),
        "feature_set": "openSMILE eGeMAPSv02 functionals",
        "protocol": "4 actor folds; test fold f, validation fold f+1 mod 4, the other 12 actors train head and reducer",
        "head": "Dropout(0.1)-Linear(88,100)-Tanh | Dropout(0.3)-Linear(100,8); AdamW lr 3e-3 wd 1e-2; "
                "class-weighted cross entropy; embedding = the 100-d tanh layer",
        "head_epochs": args.epochs,
        "seed": args.seed,
        "folds": fold_info,
        "head_pooled": {"uar": M.uar(y, pred), "wa": M.weighted_accuracy(y, pred)},
        "head_uar_per_fold": head_uar,
        "reducer_params": AnchoredReducer(anchors="ravdess", random_state=args.seed).get_params(),
        "pooled": pooled,
        "baselines_pooled": baselines_pooled,
        "fold_summary": {k: summarise(per_fold[k]) for k in points},
        "baseline_fold_summary": {k: summarise(per_fold[k]) for k in baselines},
        "per_fold": {k: [slim(r) for r in v] for k, v in per_fold.items()},
        "drift_columns": list(drift_cols),
        "drift_per_class": drift,
        "fast_vs_umap_ccc": {"valence": M.ccc(fs[:, 0], us[:, 0]), "arousal": M.ccc(fs[:, 1], us[:, 1])},
        "total_seconds": time.perf_counter() - t_all,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(to_jsonable(res), indent=1, allow_nan=False) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(None, None), ("affine", "train"), ("affine", "val")]
    fig, axes = plt.subplots(2, len(shown), figsize=(5 * len(shown), 10))
    y_tr0 = y[(fold_of != 0) & (fold_of != 1 % args.folds)]
    for j, (align, on) in enumerate(shown):
        base = variant_name(align, on)
        draw_circumplex(axes[0, j], first_train[base], y_tr0, ANCHORS, title=f"{base}: training actors (fold 0)")
        draw_circumplex(axes[1, j], points[variant_name(align, on, "fast")], y, ANCHORS,
                        title=f"{base}: held-out actors, all folds (fast)")
    fig.suptitle("RAVDESS, eGeMAPSv02 -> 100-d head embedding -> anchored UMAP. Stars: anchors; "
                 "dots: class centroids (arrow = drift); ellipses: 1 sd", fontsize=11)
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=90)
    plt.close(fig)

    body = results_markdown(to_jsonable(res))
    write_marked_section(args.markdown, body, START, END, title="Stage II on RAVDESS")
    print(body)


if __name__ == "__main__":
    main()
