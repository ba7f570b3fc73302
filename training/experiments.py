"""Settings search and the target metrics: held-out speakers, held-out corpus, persistent mood.

Protocols (all speaker- or corpus-independent):

- ``speakers``: RAVDESS 4-fold by actor (actors 01-06, 07-12, 13-18, 19-24; 3
  women and 3 men each); the other corpora are always in training. Two actors
  of the next fold are held out of training for early stopping.
- ``corpus:emovo``: train RAVDESS + JL, test EMOVO (7 classes).
- ``corpus:ravdess``: train EMOVO + JL, test RAVDESS. RAVDESS ``calm`` has no
  training class here; it is scored as ``neutral`` (``uar``) and also as a
  class of its own that is never predicted (``uar_strict``).

Metrics on the test clips: UAR over the test corpus's classes (arg-max over
the classes the test corpus uses), weighted accuracy, anchor CCC of valence and
arousal (predicted points against the anchor of the true label), RAVDESS
intensity check, and the persistent-mood ratios (one-emotion sessions vs mixed
sessions of the same clips, after each speaker's enrolment from neutral/calm).

Points come from the fitted ``AnchoredReducer`` on the 100-d embeddings when
``--points reducer`` (the runtime path), or from the probability-weighted mean of the
class anchors (``--points expected``, reducer-free, fast). With ``--reducer-align``
the reducer's alignment is fitted on the fold's early-stopping speakers (never on
its test speakers), when there are at least two of them.

Enrolment baselines for evaluated speakers come from their neutral/calm clips;
a neutral/calm clip that is itself evaluated gets a baseline that leaves it
out (leave-one-out), so no clip is ever part of its own enrolment.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from calibration.anchors import get_anchor_set
from calibration.speaker import BASELINE_EMOTIONS
from training.corpora import ANCHOR_SET_OF, Manifest, load_corpora, speaker_folds
from calibration.metrics import (anchor_agreement, boundary_share, expected_anchor, intensity_check, restricted_predictions, uar,
                                 weighted_accuracy)
from calibration.speaker import baselines_from_clips, fit_normalizer, normalize_speakers
from training.mood import persistent_mood_scores, replay_sessions

log = logging.getLogger(__name__)

PROTOCOLS = ("speakers", "corpus:emovo", "corpus:ravdess")
ANCHORS = dict(get_anchor_set("all").anchors)


# ---------------------------------------------------------------------------------------
# data


def load_table(data_root: str | Path, feature_set: str = "eGeMAPSv02", corpora: Sequence[str] = ("ravdess", "emovo", "jl"),
               variant: str = "clean", cache: str | Path = ".cache/features", progress: bool = True):
    """(X raw features, manifest) for the corpora, from the feature cache (extracting what is missing)."""
    from training.augment import Augmentation
    from training.features import extract, make_featurizer

    manifest = load_corpora(corpora, data_root=data_root)
    trim = variant.endswith("+trim")
    aug = variant.replace("+trim", "").replace("clean", "")
    table = extract(manifest, make_featurizer(feature_set), augmentation=Augmentation.from_spec(aug) if aug else None,
                    trim=trim, cache=cache, progress=progress)
    return table.X.astype(np.float64), table.manifest


# ---------------------------------------------------------------------------------------
# models


@dataclass
class Settings:
    feature_set: str = "eGeMAPSv02"
    normalization: str = "enrolment"
    model: str = "head"  # head | lr
    augment: tuple[str, ...] = ()  # extra training copies from cached augmented features
    balance: str = "corpus+class"
    epochs: int = 80
    head_lr: float = 1e-3
    dropout: float = 0.2
    weight_decay: float = 1e-3
    feature_noise: float = 0.1
    label_smoothing: float = 0.0
    batch_size: int = 32
    hidden_dims: tuple[int, ...] = ()
    mixup: float = 0.0
    estimate_baselines: bool = False  # enrolment: estimate baselines of training speakers without neutral/calm
    patience: int = 15
    select: str = "uar"  # early stopping on the validation speakers' UAR or loss
    ema: float = 0.0  # exponential moving average of the head's weights (decay per step; 0 = off)
    ensemble: int = 1
    trim: bool = False
    calibrate: bool = True
    # Stage II: alignment of class centroids onto the anchors, fitted on the early-stopping (validation)
    # speakers' embeddings ("val") or on the training layout ("train"); other AnchoredReducer parameters
    reducer_align: str | None = None
    reducer_align_on: str = "val"
    reducer_params: dict = field(default_factory=dict)

    def reducer_kwargs(self, align_speakers: Sequence[str] = ()) -> tuple[dict, bool]:
        """(AnchoredReducer parameters, whether the alignment is fitted on the validation speakers).

        An alignment on validation speakers needs at least ``MIN_ALIGN_SPEAKERS`` of them: class
        centroids of one speaker are too noisy a target for a 6-parameter map, so with fewer the
        reducer is left unaligned."""
        align = self.reducer_align
        on_val = align is not None and self.reducer_align_on == "val"
        if on_val and len(set(align_speakers)) < MIN_ALIGN_SPEAKERS:
            align, on_val = None, False
        return {"align": align, **self.reducer_params}, on_val


#: Fewest validation speakers whose embeddings a reducer alignment is fitted on (see Settings.reducer_kwargs).
MIN_ALIGN_SPEAKERS = 2


class FittedModel:
    """Normaliser + classifier(s) fitted on training features; ``predict(raw, baseline)`` is the runtime path."""

    def __init__(self, labels: list[str], normalizer, heads: list, kind: str):
        self.labels = labels
        self.normalizer = normalizer
        self.heads = heads
        self.kind = kind

    def predict(self, raw: np.ndarray, baseline=None) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities [n, C], embeddings [n, 100] or None)."""
        x = self.normalizer.apply(raw, baseline)
        return self.predict_normalized(x)

    def predict_normalized(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        from training.train import predict_head

        if self.kind == "lr":
            return np.mean([h.predict_proba(x) for h in self.heads], axis=0), None
        outs = [predict_head(h, x) for h in self.heads]
        emb = np.mean([o[0] for o in outs], axis=0)
        return np.mean([o[1] for o in outs], axis=0), emb


def fit_model(X: np.ndarray, manifest: Manifest, settings: Settings, val_mask: np.ndarray | None = None,
              X_aug: list[np.ndarray] | None = None, seed: int = 0) -> FittedModel:
    """Fit normaliser and classifier on the training rows of ``X`` (``val_mask`` rows only validate)."""
    from training.train import TrainConfig, train_head

    labels_all = manifest.labels
    val_mask = np.zeros(len(X), bool) if val_mask is None else val_mask
    tr = ~val_mask
    classes = sorted(set(labels_all[tr].tolist()))
    normalizer, Xn = fit_normalizer(X[tr], labels_all[tr], manifest.speakers[tr], settings.normalization,
                                    estimate_missing=settings.estimate_baselines)
    y = np.asarray([classes.index(c) for c in labels_all[tr]])
    corpora = manifest.corpora[tr]
    Xtrain, ytrain, ctrain = [Xn], [y], [corpora]
    for Xa in X_aug or []:
        # augmented copies, normalised with the same speaker shifts (their clean enrolment baselines)
        if settings.normalization == "enrolment":
            # enrolled in the same conditions: the baseline of an augmented copy is the mean of the
            # speaker's augmented neutral/calm clips (a patient enrols in the room they are monitored in)
            base = baselines_from_clips(Xa[tr], labels_all[tr], manifest.speakers[tr])
            Xtrain.append(normalize_speakers(normalizer, Xa[tr], manifest.speakers[tr], base))
        else:
            Xtrain.append(normalizer.apply(Xa[tr]))
        ytrain.append(y)
        ctrain.append(corpora)
    Xtr, ytr, ctr = np.concatenate(Xtrain), np.concatenate(ytrain), np.concatenate(ctrain)
    Xv = yv = None
    if val_mask.any():
        base = baselines_from_clips(X[val_mask], labels_all[val_mask], manifest.speakers[val_mask]) \
            if settings.normalization == "enrolment" else {}
        keep = np.isin(labels_all[val_mask], classes)
        Xv = normalize_speakers(normalizer, X[val_mask], manifest.speakers[val_mask], base)[keep]
        yv = np.asarray([classes.index(c) for c in labels_all[val_mask][keep]])
    heads = []
    for k in range(settings.ensemble):
        if settings.model == "lr":
            from sklearn.linear_model import LogisticRegression
            from training.sampling import sample_weights

            w = sample_weights([classes[i] for i in ytr], ctr, settings.balance) * len(ytr)
            clf = LogisticRegression(C=0.1, max_iter=2000)
            clf.fit(Xtr, ytr, sample_weight=w)
            heads.append(clf)
        else:
            cfg = TrainConfig(epochs=settings.epochs, batch_size=settings.batch_size, head_lr=settings.head_lr,
                              dropout=settings.dropout, weight_decay=settings.weight_decay,
                              feature_noise=settings.feature_noise, label_smoothing=settings.label_smoothing,
                              hidden_dims=tuple(settings.hidden_dims), mixup=settings.mixup, select=settings.select,
                              ema=settings.ema,
                              balance=settings.balance, seed=seed * 100 + k, patience=settings.patience, min_epochs=10,
                              calibrate_temperature=settings.calibrate, device="cpu")
            head, _ = train_head(Xtr, ytr, classes, cfg, Xv, yv, corpora=ctr)
            heads.append(head)
    return FittedModel(classes, normalizer, heads, settings.model)


# ---------------------------------------------------------------------------------------
# evaluation


def loo_baselines(X: np.ndarray, labels: np.ndarray, speakers: np.ndarray,
                  emotions: Sequence[str] = BASELINE_EMOTIONS) -> list[np.ndarray | None]:
    """Per clip: the mean of its speaker's neutral/calm clips, leaving the clip itself out."""
    out: list[np.ndarray | None] = [None] * len(X)
    for spk in np.unique(speakers):
        idx = np.flatnonzero(speakers == spk)
        base = idx[np.isin(labels[idx], list(emotions))]
        total = X[base].sum(axis=0) if base.size else None
        for i in idx:
            if base.size == 0:
                continue
            if i in base:
                out[i] = (total - X[i]) / (base.size - 1) if base.size > 1 else None
            else:
                out[i] = total / base.size
    return out


def predict_clips(model: FittedModel, X: np.ndarray, manifest: Manifest, normalization: str):
    """Probabilities and embeddings of test clips, each with its (leave-one-out) enrolment baseline."""
    if normalization == "enrolment":
        bases = loo_baselines(X, manifest.labels, manifest.speakers)
    else:
        bases = [None] * len(X)
    xn = np.stack([model.normalizer.apply(X[i:i + 1], bases[i])[0] for i in range(len(X))])
    return model.predict_normalized(xn)


def points_from(model: FittedModel, probs: np.ndarray, emb: np.ndarray | None, reducer=None) -> np.ndarray:
    if reducer is not None and emb is not None:
        return np.asarray(reducer.transform(emb))[:, :2]
    return expected_anchor(probs, model.labels, ANCHORS)


def score(model: FittedModel, probs: np.ndarray, points: np.ndarray, manifest: Manifest, test_corpus: str) -> dict:
    labels = manifest.labels
    allowed = list(get_anchor_set(ANCHOR_SET_OF[test_corpus]).labels)
    truth = labels.copy()
    scored_allowed = [c for c in allowed if c in model.labels]
    if "calm" in allowed and "calm" not in model.labels:  # corpus:ravdess, calm scored as neutral
        truth = np.where(truth == "calm", "neutral", truth)
    pred = restricted_predictions(probs, model.labels, scored_allowed)
    out = {"uar": uar(truth, pred), "wa": weighted_accuracy(truth, pred),
           "uar_unrestricted": uar(labels, np.asarray(model.labels)[np.argmax(probs, axis=1)])}
    if not np.array_equal(truth, labels):
        out["uar_strict"] = uar(labels, pred)
    ccc = anchor_agreement(points, labels, ANCHORS)
    out["ccc_valence"], out["ccc_arousal"] = ccc["valence"], ccc["arousal"]
    out["boundary"] = boundary_share(points)
    known = np.isin(labels, model.labels)
    if known.any():
        out["ece"] = expected_calibration_error(probs[known], np.asarray([model.labels.index(c) for c in labels[known]]))
    if test_corpus == "ravdess":
        inten = intensity_check(points[:, 1], manifest.column("intensity"), manifest.speakers,
                                manifest.column("sentence"), labels)
        out["intensity"] = inten["share"]
    return out


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = 10) -> float:
    """ECE: |confidence - accuracy| of the arg-max class, averaged over equal-width confidence bins."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == targets
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(conf[m].mean() - correct[m].mean())
    return float(ece)


def persistent_mood(model: FittedModel, X: np.ndarray, manifest: Manifest, normalization: str, reducer=None,
                    seed: int = 0) -> dict:
    """Persistent-mood ratios on the test speakers that have enrolment clips."""

    def predict(raw, baseline):
        probs, emb = model.predict(raw, baseline)
        return probs, points_from(model, probs, emb, reducer)

    result = replay_sessions(X, manifest.labels, manifest.speakers, predict, normalization=normalization, seed=seed)
    return persistent_mood_scores(result, model.labels, ANCHORS)


def protocol_splits(manifest: Manifest, protocol: str) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """[(fold name, train mask, val mask, test mask)] for a protocol."""
    corpora = manifest.corpora
    out = []
    if protocol == "speakers":
        is_rav = corpora == "ravdess"
        folds = np.full(len(manifest), -1)
        folds[is_rav] = speaker_folds(manifest[is_rav], 4)
        speakers = manifest.speakers
        for f in range(4):
            test = folds == f
            nxt = (f + 1) % 4
            val_spk = sorted(set(speakers[folds == nxt].tolist()))[:2]  # one man and one woman
            val = np.isin(speakers, val_spk)
            out.append((f"fold{f}", ~test & ~val, val, test))
    elif protocol.startswith("corpus:"):
        target = protocol.split(":", 1)[1]
        test = corpora == target
        train_pool = ~test
        # validation: two speakers of the first acted training corpus with neutral clips
        val_corpus = "ravdess" if target != "ravdess" else "emovo"
        val_spk = sorted(set(manifest.speakers[corpora == val_corpus].tolist()))[:2 if val_corpus == "ravdess" else 1]
        val = np.isin(manifest.speakers, val_spk)
        out.append((f"test={target}", train_pool & ~val, val, test))
    else:
        raise ValueError(f"unknown protocol {protocol!r}; known: {PROTOCOLS}")
    return out


def run_protocol(X: np.ndarray, manifest: Manifest, protocol: str, settings: Settings, seeds: Sequence[int] = (0,),
                 X_aug: list[np.ndarray] | None = None, with_reducer: bool = False, mood: bool = True,
                 mood_control: bool = False) -> list[dict]:
    """Fit and score every fold x seed of a protocol. ``mood_control`` also replays the persistent-mood
    sessions with self-normalisation (columns ``mood_self_*``), the control that must fail."""
    import torch

    torch.set_num_threads(1)  # a small head on features: extra threads only contend
    rows = []
    for seed in seeds:
        for name, tr, val, test in protocol_splits(manifest, protocol):
            t0 = time.time()
            fit_rows = tr | val
            model = fit_model(X[fit_rows], manifest[fit_rows], settings, val_mask=val[fit_rows],
                              X_aug=[Xa[fit_rows] for Xa in (X_aug or [])], seed=seed)
            test_m = manifest[test]
            test_corpus = test_m.corpora[0]
            probs, emb = predict_clips(model, X[test], test_m, settings.normalization)
            reducer = None
            if with_reducer and emb is not None:
                params, on_val = settings.reducer_kwargs(manifest.speakers[val])
                reducer = fit_reducer_on(model, X[tr], manifest[tr], settings.normalization,
                                         X_align=X[val] if on_val else None, manifest_align=manifest[val] if on_val else None,
                                         **params)
            points = points_from(model, probs, emb, reducer)
            row = {"protocol": protocol, "fold": name, "seed": seed, **score(model, probs, points, test_m, test_corpus)}
            if mood:
                pm = persistent_mood(model, X[test], test_m, settings.normalization, reducer, seed=seed)
                row.update({f"mood_{k}": v for k, v in pm.items() if k.endswith("ratio")})
                if mood_control:
                    pm = persistent_mood(model, X[test], test_m, "self", reducer, seed=seed)
                    row.update({f"mood_self_{k}": v for k, v in pm.items()})
            row["seconds"] = round(time.time() - t0, 1)
            rows.append(row)
            log.info(json.dumps(row))
    return rows


def embed_clips(model: FittedModel, X: np.ndarray, manifest: Manifest, normalization: str) -> np.ndarray:
    """Embeddings of clips, each with its speaker's leave-one-out enrolment baseline (as the runtime would)."""
    return predict_clips(model, X, manifest, normalization)[1]


def fit_reducer_on(model: FittedModel, X: np.ndarray, manifest: Manifest, normalization: str,
                   X_align: np.ndarray | None = None, manifest_align: Manifest | None = None, **params):
    """Fit the Stage II reducer on the training embeddings (as ``training.export`` does for a bundle).

    With ``X_align``/``manifest_align`` (held-out speakers' raw features, e.g. the early-stopping
    speakers) and an ``align`` in ``params``, the alignment is fitted on their embeddings.
    """
    from training.export import fit_reducer

    emb = embed_clips(model, X, manifest, normalization)
    if X_align is not None and len(X_align) and params.get("align"):
        emb_align = embed_clips(model, X_align, manifest_align, normalization)
        return fit_reducer(emb, manifest.labels, X_align=emb_align, y_align=manifest_align.labels, **params)
    return fit_reducer(emb, manifest.labels, **params)


def summarize(rows: list[dict]) -> dict:
    """mean, std, min, max of every numeric column per protocol."""
    out: dict[str, dict] = {}
    for protocol in sorted(set(r["protocol"] for r in rows)):
        rs = [r for r in rows if r["protocol"] == protocol]
        keys = [k for k in rs[0] if isinstance(rs[0][k], float) and k != "seconds"]
        out[protocol] = {}
        for k in keys:
            v = np.asarray([r[k] for r in rs if k in r], dtype=np.float64)
            out[protocol][k] = {"mean": float(np.nanmean(v)), "std": float(np.nanstd(v)), "min": float(np.nanmin(v)),
                                "max": float(np.nanmax(v)), "n": int(np.isfinite(v).sum())}
    return out


def format_summary(summary: dict) -> str:
    lines = []
    for protocol, cols in summary.items():
        lines.append(f"[{protocol}]")
        for k, s in cols.items():
            lines.append(f"  {k:24s} {s['mean']:.3f} ± {s['std']:.3f}  (min {s['min']:.3f}, max {s['max']:.3f}, n={s['n']})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.experiments", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="../shared/data", help="folder holding ravdess/, emovo/, jl-corpus/")
    p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--feature-set", default="eGeMAPSv02", choices=("eGeMAPSv02", "ComParE_2016"))
    p.add_argument("--normalization", default="enrolment", choices=("none", "population", "enrolment"))
    p.add_argument("--model", default="head", choices=("head", "lr"))
    p.add_argument("--augment", nargs="*", default=[], help="augmented training copies, e.g. noise gain speed reverb")
    p.add_argument("--balance", default="corpus+class", choices=("corpus+class", "class", "none"))
    p.add_argument("--epochs", type=int, default=80)
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--weight-decay", type=float, default=1e-3)
    p.add_argument("--feature-noise", type=float, default=0.1)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--hidden-dims", type=int, nargs="*", default=[], help="MLP encoder widths before the bottleneck")
    p.add_argument("--mixup", type=float, default=0.0)
    p.add_argument("--select", default="uar", choices=("uar", "loss"), help="early stopping on validation UAR or loss")
    p.add_argument("--ema", type=float, default=0.0, help="EMA decay of the head's weights (0 = off)")
    p.add_argument("--estimate-baselines", action="store_true",
                   help="enrolment: estimate baselines of training speakers without neutral/calm clips (JL)")
    p.add_argument("--reducer-align", default="none", choices=("none", "similarity", "affine"))
    p.add_argument("--reducer-align-on", default="val", choices=("val", "train"))
    p.add_argument("--reducer-fast-neighbors", type=int, default=None)
    p.add_argument("--ensemble", type=int, default=1)
    p.add_argument("--trim", action="store_true", help="cut leading/trailing silence before feature extraction")
    p.add_argument("--no-temperature", action="store_true", help="skip temperature scaling of the probabilities")
    p.add_argument("--points", default="expected", choices=("expected", "reducer"))
    p.add_argument("--no-mood", action="store_true")
    p.add_argument("--mood-control", action="store_true",
                   help="also replay the persistent-mood sessions with self-normalisation (must fail)")
    p.add_argument("--cache", default=".cache/features")
    p.add_argument("--out", help="write rows and summary JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = Settings(feature_set=args.feature_set, normalization=args.normalization, model=args.model,
                        augment=tuple(args.augment), balance=args.balance, epochs=args.epochs, head_lr=args.head_lr,
                        dropout=args.dropout, weight_decay=args.weight_decay, feature_noise=args.feature_noise,
                        label_smoothing=args.label_smoothing, ensemble=args.ensemble, trim=args.trim,
                        calibrate=not args.no_temperature, hidden_dims=tuple(args.hidden_dims), mixup=args.mixup,
                        select=args.select, ema=args.ema, estimate_baselines=args.estimate_baselines,
                        reducer_align=None if args.reducer_align == "none" else args.reducer_align,
                        reducer_align_on=args.reducer_align_on,
                        reducer_params={} if args.reducer_fast_neighbors is None else
                        {"fast_neighbors": args.reducer_fast_neighbors})
    suffix = "+trim" if args.trim else ""
    X, manifest = load_table(args.data_root, args.feature_set, variant="clean" + suffix, cache=args.cache)
    X_aug = []
    for aug in args.augment:
        Xa, ma = load_table(args.data_root, args.feature_set, variant=aug + suffix, cache=args.cache)
        if not np.array_equal(ma.keys, manifest.keys):
            raise RuntimeError(f"augmented set {aug} lost clips; re-run extraction")
        X_aug.append(Xa)
    rows = []
    for protocol in args.protocols:
        rows += run_protocol(X, manifest, protocol, settings, args.seeds, X_aug, with_reducer=args.points == "reducer",
                             mood=not args.no_mood, mood_control=args.mood_control)
    summary = summarize(rows)
    print(format_summary(summary))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"settings": settings.__dict__, "argv": list(argv or sys.argv[1:]),
                                              "rows": rows, "summary": summary}, indent=1, default=list))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
