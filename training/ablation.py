"""Paired ablations of the held-out protocols: one head fit per (protocol, fold, seed), several Stage II variants.

The model card's "what helped" table comes from this module. Every head setting
is a field of ``training.experiments.Settings`` given as JSON; every Stage II
variant is a set of ``AnchoredReducer`` parameters, fitted on the same fold's
training embeddings (``"_val": true`` fits the alignment on the fold's
early-stopping speakers' embeddings; ``"_fit_val": true`` adds those embeddings
to the UMAP fit). ``exp`` (the head's probability-weighted
anchor) is always scored too, for reference. Rows are paired by
(protocol, fold, seed), so two runs can be compared fold by fold::

    python -m training.ablation --tag linear --seeds 0 1 --out .cache/ablation
    python -m training.ablation --tag mlp256 --settings '{"hidden_dims": [256]}' --seeds 0 1 --out .cache/ablation
    python -m training.ablation --compare .cache/ablation/linear.json:affval .cache/ablation/mlp256.json:affval

Run it with ``nice``: it keeps one thread busy for a few minutes per run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

METRICS = ("uar", "ccc_valence", "ccc_arousal", "intensity", "boundary")
VAL_METRICS = tuple(f"val_{k}" for k in METRICS)
DEFAULT_REDUCERS = '{"red": {}, "affval": {"align": "affine", "_val": true}}'


def run(tag: str, settings: dict, protocols: Sequence[str], seeds: Sequence[int], reducers: dict,
        data_root: str = "../shared/data", variant: str = "clean", feature_set: str = "eGeMAPSv02",
        drop_corpus: str | None = None, cache: str = ".cache/features") -> dict:
    import torch

    from training import experiments as E
    from training.export import fit_reducer

    torch.set_num_threads(1)
    cfg = E.Settings(**{"balance": "class", **settings})
    X, m = E.load_table(data_root, feature_set, variant=variant, cache=cache, progress=False)
    if drop_corpus:
        keep = m.corpora != drop_corpus
        X, m = X[keep], m[keep]
    rows = []
    for proto in protocols:
        for seed in seeds:
            for name, tr, val, test in E.protocol_splits(m, proto):
                t0 = time.time()
                fr = tr | val
                model = E.fit_model(X[fr], m[fr], cfg, val_mask=val[fr], seed=seed)
                tm = m[test]
                probs, emb = E.predict_clips(model, X[test], tm, cfg.normalization)
                emb_tr = E.embed_clips(model, X[tr], m[tr], cfg.normalization)
                probs_val, emb_val = E.predict_clips(model, X[val], m[val], cfg.normalization)
                variants = {"exp": E.expected_anchor(probs, model.labels, E.ANCHORS)}
                val_variants = {"exp": E.expected_anchor(probs_val, model.labels, E.ANCHORS)}
                for rname, params in reducers.items():
                    params = dict(params)
                    kw = {"X_align": emb_val, "y_align": m[val].labels} if params.pop("_val", False) else {}
                    fit_x, fit_y = emb_tr, m[tr].labels
                    if params.pop("_fit_val", False):  # the validation speakers' embeddings join the UMAP fit
                        fit_x, fit_y = np.concatenate([emb_tr, emb_val]), np.concatenate([m[tr].labels, m[val].labels])
                    reducer = fit_reducer(fit_x, fit_y, **params, **kw)
                    variants[rname] = reducer.transform(emb)
                    val_variants[rname] = reducer.transform(emb_val)
                for vname, pts in variants.items():
                    sc = E.score(model, probs, pts, tm, tm.corpora[0])
                    rows.append({"protocol": proto, "fold": name, "seed": seed, "points": vname,
                                 **{k: sc[k] for k in METRICS if k in sc}})
                    # the same on the fold's early-stopping speakers (for choosing settings without the test
                    # speakers; in-sample for the alignment and the early stopping, so optimistic)
                    mv = m[val]
                    vc = "ravdess" if (mv.corpora == "ravdess").all() else mv.corpora[0]
                    sv = E.score(model, probs_val, val_variants[vname], mv, vc)
                    rows[-1].update({f"val_{k}": sv[k] for k in METRICS if k in sv})
                print(tag, proto, name, seed, f"{time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    summary = {}
    for proto in protocols:
        for vname in dict.fromkeys(r["points"] for r in rows):
            rs = [r for r in rows if r["protocol"] == proto and r["points"] == vname]
            summary[f"{proto}|{vname}"] = {k: [float(np.nanmean([r[k] for r in rs])), float(np.nanstd([r[k] for r in rs]))]
                                           for k in METRICS + VAL_METRICS if k in rs[0]}
    return {"tag": tag, "settings": settings, "reducers": reducers, "variant": variant, "drop_corpus": drop_corpus,
            "seeds": list(seeds), "rows": rows, "summary": summary}


def compare(base_spec: str, other_spec: str) -> list[str]:
    """Paired deltas ``other - base`` per protocol; specs are ``FILE.json:POINTS``."""

    def load(spec):
        path, pts = spec.rsplit(":", 1)
        rows = json.loads(Path(path).read_text())["rows"]
        return {(r["protocol"], r["fold"], r["seed"]): r for r in rows if r["points"] == pts}

    base, other = load(base_spec), load(other_spec)
    lines = []
    for proto in dict.fromkeys(k[0] for k in other):
        keys = [k for k in other if k in base and k[0] == proto]
        parts = []
        for metric in METRICS:
            d = [other[k][metric] - base[k][metric] for k in keys if metric in other[k]]
            v = [other[k][metric] for k in keys if metric in other[k]]
            if d:
                parts.append(f"{metric} {np.mean(v):.3f} ± {np.std(v):.3f} (Δ {np.mean(d):+.3f} ± {np.std(d):.3f})")
        lines.append(f"{other_spec} vs {base_spec} [{proto}, n={len(keys)}]: " + "; ".join(parts))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    from training.experiments import PROTOCOLS

    p = argparse.ArgumentParser(prog="python -m training.ablation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tag", help="name of the run (the output file is OUT/TAG.json)")
    p.add_argument("--settings", default="{}", help="JSON of training.experiments.Settings fields (balance defaults to class)")
    p.add_argument("--protocols", nargs="+", default=["speakers"], choices=PROTOCOLS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--reducers", default=DEFAULT_REDUCERS, help="JSON {name: AnchoredReducer params (+ \"_val\": true)}")
    p.add_argument("--variant", default="clean", help="feature-cache variant, e.g. clean+trim")
    p.add_argument("--feature-set", default="eGeMAPSv02")
    p.add_argument("--drop-corpus", default=None, help="leave this corpus out of every split (e.g. jl)")
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--cache", default=".cache/features")
    p.add_argument("--out", default=".cache/ablation", help="folder for TAG.json")
    p.add_argument("--compare", nargs="+", metavar="FILE.json:POINTS",
                   help="print paired deltas of each later run against the first, and exit")
    args = p.parse_args(argv)
    if args.compare:
        for spec in args.compare[1:]:
            print("\n".join(compare(args.compare[0], spec)))
        return 0
    if not args.tag:
        p.error("--tag is required to run")
    result = run(args.tag, json.loads(args.settings), args.protocols, args.seeds, json.loads(args.reducers),
                 args.data_root, args.variant, args.feature_set, args.drop_corpus, args.cache)
    out = Path(args.out) / f"{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    for key, cols in result["summary"].items():
        print(args.tag, key, " ".join(f"{k} {m:.3f} ± {s:.3f}" for k, (m, s) in cols.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
