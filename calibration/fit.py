"""Fit an anchored reducer on exported embeddings and write it into a bundle folder.

``python -m calibration.fit EMBEDDINGS.npz --bundle DIR`` fits UMAP on the rows
with split == "train" only (an optional alignment is fitted on the "val" rows
when there are any) and writes ``reducer.json`` + ``reducer.npz`` into DIR. A
``bundle.json`` already there is left untouched (the bundle's owner updates
it); the command only reports that it saw one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from calibration.anchors import ANCHOR_SETS


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m calibration.fit",
        description="Fit Stage II (anchored supervised UMAP: embeddings -> valence, arousal) on the train "
                    "split of an exported-embedding .npz and save it into a bundle folder "
                    "as reducer.json + reducer.npz.",
    )
    ap.add_argument("embeddings", type=Path,
                    help="exported-embedding .npz: embeddings [n,d], labels [n] (canonical emotion names), "
                         "speakers [n], split [n] in train/val/test")
    ap.add_argument("--bundle", type=Path, required=True,
                    help="folder to write reducer.json + reducer.npz into (created if missing; an existing "
                         "bundle.json is not modified)")
    ap.add_argument("--anchors", default="auto",
                    help="anchor set name (" + ", ".join(sorted(ANCHOR_SETS)) + ") or a .json file; "
                         "'auto' (default) uses the file's corpus name when it is a known set, else 'all'")
    ap.add_argument("--align", default="none", choices=["none", "similarity", "affine"],
                    help="after the fit, map class centroids onto their anchors by least squares: "
                         "similarity (rotation+scale+shift) or affine; none keeps the research method")
    ap.add_argument("--align-on", default="auto", choices=["auto", "train", "val"],
                    help="which class centroids the alignment is fitted on: val (the file's validation rows, "
                         "out-of-sample like new speech), train (the training layout), or auto (default: val "
                         "when the file has val rows, else train)")
    ap.add_argument("--random-state", type=int, default=0,
                    help="seed for the init noise and UMAP; makes the fit reproducible (default: 0)")
    ap.add_argument("--n-neighbors", type=int, default=20, help="UMAP n_neighbors (default: 20)")
    ap.add_argument("--min-dist", type=float, default=0.1, help="UMAP min_dist (default: 0.1)")
    ap.add_argument("--target-weight", type=float, default=0.1,
                    help="UMAP target_weight: 0 = embedding topology only, 1 = strong emphasis on the labels "
                         "(default: 0.1)")
    ap.add_argument("--n-epochs", type=int, default=150, help="UMAP optimisation epochs (default: 150)")
    ap.add_argument("--negative-sample-rate", type=int, default=10, help="UMAP negative_sample_rate (default: 10)")
    ap.add_argument("--learning-rate", type=float, default=0.01, help="UMAP learning_rate (default: 0.01)")
    ap.add_argument("--repulsion-strength", type=float, default=0.1, help="UMAP repulsion_strength (default: 0.1)")
    ap.add_argument("--init-noise", type=float, default=0.01,
                    help="std of the Gaussian noise added to each sample's anchor init (default: 0.01)")
    ap.add_argument("--fast-neighbors", type=int, default=None,
                    help="neighbours for the fast streaming transform (default: same as --n-neighbors)")
    ap.add_argument("--fast-max-reference", type=int, default=4096,
                    help="max training points the fast transform searches; larger sets are subsampled "
                         "per class (default: 4096)")
    ap.add_argument("--no-clip", action="store_true", help="do not clip outputs to [-1, 1]")
    ap.add_argument("--verbose", action="store_true", help="show umap-learn's progress output")
    return ap


def resolve_anchor_arg(value: str, data: Mapping[str, np.ndarray]) -> str:
    """'auto' -> the corpus' own anchor set when it has one, else the full table."""
    if value != "auto":
        return value
    corpus = data.get("corpus")
    if corpus is not None and corpus.ndim == 0 and str(corpus) in ANCHOR_SETS:
        return str(corpus)
    if corpus is not None and corpus.ndim == 1 and len(set(corpus.tolist())) == 1 and str(corpus[0]) in ANCHOR_SETS:
        return str(corpus[0])
    return "all"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from calibration.data import load_embeddings, select_split
    from calibration.reducer import AnchoredReducer

    data = load_embeddings(args.embeddings)
    train = select_split(data, "train")
    has_val = bool(np.any(data["split"] == "val"))
    align_on = args.align_on if args.align_on != "auto" else ("val" if has_val else "train")
    if args.align != "none" and align_on == "val" and not has_val:
        raise SystemExit("--align-on val: the file has no rows with split == 'val'")
    anchors = resolve_anchor_arg(args.anchors, data)
    reducer = AnchoredReducer(
        anchors=anchors,
        align=None if args.align == "none" else args.align,
        n_neighbors=args.n_neighbors,
        min_dist=args.min_dist,
        target_weight=args.target_weight,
        n_epochs=args.n_epochs,
        negative_sample_rate=args.negative_sample_rate,
        learning_rate=args.learning_rate,
        repulsion_strength=args.repulsion_strength,
        init_noise=args.init_noise,
        fast_neighbors=args.fast_neighbors,
        fast_max_reference=args.fast_max_reference,
        clip=not args.no_clip,
        random_state=args.random_state,
        verbose=args.verbose,
    )
    n = len(train["labels"])
    print(f"fitting on {n} train rows of {args.embeddings.name} ({len(set(train['labels'].tolist()))} classes, "
          f"anchors={anchors}, align={args.align}"
          f"{'' if args.align == 'none' else ' on ' + align_on}) ...", flush=True)
    t0 = time.perf_counter()
    if args.align != "none" and align_on == "val":
        val = select_split(data, "val")
        reducer.fit(train["embeddings"], train["labels"], X_align=val["embeddings"], y_align=val["labels"])
    else:
        reducer.fit(train["embeddings"], train["labels"])
    elapsed = time.perf_counter() - t0
    reducer.save(args.bundle)
    summary = {
        "n_train": n,
        "fit_seconds": round(elapsed, 2),
        "classes": [str(c) for c in reducer.classes_],
        "anchors": anchors,
        "align": reducer.align,
        "align_source": reducer.align_source_,
        "mean_centroid_drift": {k: round(v["mean"], 4) for k, v in reducer.drift_.items()},
        "wrote": [str(args.bundle / "reducer.json"), str(args.bundle / "reducer.npz")],
    }
    print(json.dumps(summary, indent=2))
    if (args.bundle / "bundle.json").is_file():
        print(f"note: {args.bundle / 'bundle.json'} exists and was left unchanged; "
              "it should list reducer.json and reducer.npz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
