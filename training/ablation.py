"""Paired ablations of the held-out protocols: one head fit per (protocol, fold, seed), several Stage II variants.

The model card's "what helped" table comes from this module (``python -m training ablate``).
The head is fitted with the settings of the usual flags (:mod:`training.settings`); every Stage II
variant is a set of ``AnchoredReducer`` parameters, fitted on the same fold's training embeddings
(``"_val": true`` fits the alignment on the fold's early-stopping speakers' embeddings;
``"_fit_val": true`` adds those embeddings to the UMAP fit). ``exp`` (the head's
probability-weighted anchor) is always scored too, for reference. Rows are paired by
(protocol, fold, seed), so two runs can be compared fold by fold::

    python -m training ablate --tag linear --balance class --seeds 0 1 --out .cache/ablation
    python -m training ablate --tag mlp256 --balance class --hidden-dims 256 --seeds 0 1 --out .cache/ablation
    python -m training ablate --compare .cache/ablation/linear.json:affval .cache/ablation/mlp256.json:affval

Run it with ``nice``: it keeps one thread busy for a few minutes per run.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from calibration.metrics import expected_anchor
from training import experiments as E
from training.corpora import Manifest
from training.settings import Settings

METRICS = ("uar", "ccc_valence", "ccc_arousal", "intensity", "boundary")
VAL_METRICS = tuple(f"val_{k}" for k in METRICS)
DEFAULT_REDUCERS = '{"red": {}, "affval": {"align": "affine", "_val": true}}'


def _variants(model: E.FittedModel, m: Manifest, split: tuple[str, np.ndarray, np.ndarray, np.ndarray],
              X: np.ndarray, reducers: dict[str, dict[str, Any]], normalization: str
              ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """(test probabilities, test points per variant, validation probabilities, validation points per variant)."""
    from training.export import fit_reducer

    _, tr, val, test = split
    probs, emb = E.predict_clips(model, X[test], m[test], normalization)
    emb_tr = E.embed_clips(model, X[tr], m[tr], normalization)
    probs_val, emb_val = E.predict_clips(model, X[val], m[val], normalization)
    if emb is None or emb_val is None:
        raise ValueError("ablations score reducers on the head's embeddings: --model head")
    variants = {"exp": expected_anchor(probs, model.labels, E.ANCHORS)}
    val_variants = {"exp": expected_anchor(probs_val, model.labels, E.ANCHORS)}
    for rname, spec in reducers.items():
        params = dict(spec)
        kw = {"X_align": emb_val, "y_align": m[val].labels} if params.pop("_val", False) else {}
        fit_x, fit_y = emb_tr, m[tr].labels
        if params.pop("_fit_val", False):  # the validation speakers' embeddings join the UMAP fit
            fit_x, fit_y = np.concatenate([emb_tr, emb_val]), np.concatenate([m[tr].labels, m[val].labels])
        reducer = fit_reducer(fit_x, fit_y, **params, **kw)
        variants[rname] = reducer.transform(emb)
        val_variants[rname] = reducer.transform(emb_val)
    return probs, variants, probs_val, val_variants


def _fold_rows(model: E.FittedModel, m: Manifest, split: tuple[str, np.ndarray, np.ndarray, np.ndarray],
               X: np.ndarray, reducers: dict[str, dict[str, Any]], normalization: str) -> list[dict[str, Any]]:
    """One row per points variant: the test metrics, and the same on the fold's early-stopping speakers."""
    probs, variants, probs_val, val_variants = _variants(model, m, split, X, reducers, normalization)
    tm, mv = m[split[3]], m[split[2]]
    vc = "ravdess" if (mv.corpora == "ravdess").all() else str(mv.corpora[0])
    rows = []
    for vname, pts in variants.items():
        sc = E.score(model, probs, pts, tm, str(tm.corpora[0]))
        # the same on the fold's early-stopping speakers (for choosing settings without the test
        # speakers; in-sample for the alignment and the early stopping, so optimistic)
        sv = E.score(model, probs_val, val_variants[vname], mv, vc)
        rows.append({"points": vname, **{k: sc[k] for k in METRICS if k in sc},
                     **{f"val_{k}": sv[k] for k in METRICS if k in sv}})
    return rows


def run(tag: str, X: np.ndarray, manifest: Manifest, settings: Settings, protocols: Sequence[str],
        seeds: Sequence[int], reducers: dict[str, dict[str, Any]],
        X_aug: Sequence[np.ndarray] | None = None) -> dict[str, Any]:
    """Fit one head per (protocol, fold, seed) on features ``X`` and score every reducer variant on it."""
    import torch

    torch.set_num_threads(1)
    rows = []
    for proto in protocols:
        for seed in seeds:
            for split in E.protocol_splits(manifest, proto):
                t0 = time.time()
                name, tr, val, _ = split
                fr = tr | val
                model = E.fit_model(X[fr], manifest[fr], settings, val_mask=val[fr],
                                    X_aug=[Xa[fr] for Xa in X_aug or []], seed=seed)
                for row in _fold_rows(model, manifest, split, X, reducers, settings.normalization):
                    rows.append({"protocol": proto, "fold": name, "seed": seed, **row})
                print(tag, proto, name, seed, f"{time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    summary = {}
    for proto in protocols:
        for vname in dict.fromkeys(r["points"] for r in rows):
            rs = [r for r in rows if r["protocol"] == proto and r["points"] == vname]
            summary[f"{proto}|{vname}"] = {k: [float(np.nanmean([r[k] for r in rs])),
                                               float(np.nanstd([r[k] for r in rs]))]
                                           for k in METRICS + VAL_METRICS if k in rs[0]}
    return {"tag": tag, "settings": settings.to_json(), "reducers": reducers,
            "corpora": sorted(set(manifest.corpora.tolist())), "seeds": list(seeds), "rows": rows, "summary": summary}


def _load_rows(spec: str) -> dict[tuple[str, str, int], dict[str, Any]]:
    """``FILE.json:POINTS``: the rows of one points variant of a run, keyed by (protocol, fold, seed)."""
    path, pts = spec.rsplit(":", 1)
    rows = json.loads(Path(path).read_text())["rows"]
    return {(r["protocol"], r["fold"], r["seed"]): r for r in rows if r["points"] == pts}


def compare(base_spec: str, other_spec: str) -> list[str]:
    """Paired deltas ``other - base`` per protocol; specs are ``FILE.json:POINTS``."""
    base, other = _load_rows(base_spec), _load_rows(other_spec)
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
