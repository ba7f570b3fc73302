"""Held-out protocols and their metrics: held-out speakers, held-out corpus, persistent mood.

The library behind ``python -m training evaluate`` and ``python -m training experiment``
(settings search); the settings themselves are :class:`training.settings.Settings`.

Protocols (all speaker- or corpus-independent):

- ``speakers``: RAVDESS 4-fold by actor (actors 01-06, 07-12, 13-18, 19-24; 3
  women and 3 men each); the other corpora are always in training. Two actors
  of the next fold are held out of training for early stopping.
- ``corpus:emovo``: train RAVDESS + JL, test EMOVO (7 classes).
- ``corpus:ravdess``: train EMOVO + JL, test RAVDESS. RAVDESS ``calm`` has no
  training class here; it is scored as ``neutral`` (``uar``) and also as a
  class of its own that is never predicted (``uar_strict``).
- ``corpus:jl``: train RAVDESS + EMOVO, test JL-Corpus (New Zealand English;
  ``excited`` has no training class: it counts in the CCCs, not in the UAR).
  With the two above, the leave-one-corpus-out view that selects models.

When the items are speech segments (``--units segments``), every metric is
computed per clip from the duration-weighted mean of its segments' points and
probabilities, as a clinician reads a recording; ``seg_*`` columns give the
segment-level UAR and CCCs. ``valence_bias`` is the mean predicted valence
minus the mean anchor valence of the test clips (a lean toward "unpleasant"
is negative), ``neutral_v``/``neutral_a`` the centroid of the neutral clips.
With enrolment normalisation the same metrics are also reported for speakers
who were never enrolled (``unenrolled_*``): what a new patient gets.

Metrics on the test clips: UAR over the test corpus's classes (arg-max over
the classes the test corpus uses), weighted accuracy, anchor CCC of valence and
arousal (predicted points against the anchor of the true label), RAVDESS
intensity check, and the persistent-mood ratios (one-emotion sessions vs mixed
sessions of the same clips, after each speaker's enrolment from neutral/calm).

Points come from the fitted ``AnchoredReducer`` on the 100-d embeddings
(``with_reducer=True``, ``--points reducer``: the runtime path), or from the
probability-weighted mean of the class anchors (``--points expected``,
reducer-free, fast). With ``--reducer-align`` the reducer's alignment is fitted
on the fold's early-stopping speakers (never on its test speakers), when there
are at least two of them.

Enrolment baselines for evaluated speakers come from their neutral/calm clips;
a neutral/calm clip that is itself evaluated gets a baseline that leaves it
out (leave-one-out), so no clip is ever part of its own enrolment.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from calibration.anchors import get_anchor_set
from calibration.metrics import (anchor_agreement, boundary_share, expected_anchor, intensity_check,
                                 restricted_predictions, uar, weighted_accuracy)
from calibration.speaker import (BASELINE_EMOTIONS, FeatureNormalizer, SpeakerBaseline, baselines_from_clips,
                                 composition_of, fit_normalizer, normalize_speakers)
from training.corpora import ANCHOR_SET_OF, Manifest, speaker_folds
from training.layermix import LayerMix, fit_layer_mix
from training.mood import persistent_mood_scores, replay_sessions
from training.settings import Settings

log = logging.getLogger(__name__)

PROTOCOLS = ("speakers", "corpus:emovo", "corpus:ravdess", "corpus:jl")
#: The leave-one-corpus-out protocols (model selection averages over them).
LOCO = ("corpus:emovo", "corpus:ravdess", "corpus:jl")
ANCHORS = dict(get_anchor_set("all").anchors)
#: One fold's result: protocol, fold, seed and the metrics (floats).
Row = dict[str, Any]


# ---------------------------------------------------------------------------------------
# models


class FittedModel:
    """Normaliser + classifier(s) fitted on training features; ``predict(raw, baseline)`` is the runtime path."""

    def __init__(self, labels: list[str], normalizer: FeatureNormalizer, heads: list[Any], kind: str):
        self.labels = labels
        self.normalizer = normalizer
        self.heads = heads
        self.kind = kind

    def predict(self, raw: np.ndarray, baseline: SpeakerBaseline | np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
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


def training_rows(X: np.ndarray, manifest: Manifest, tr: np.ndarray, classes: list[str], settings: Settings,
                   X_aug: Sequence[np.ndarray]) -> tuple[FeatureNormalizer, np.ndarray, np.ndarray, np.ndarray]:
    """(normaliser, normalised features, class indices, corpora) of the training rows and their augmented copies."""
    labels, speakers = manifest.labels[tr], manifest.speakers[tr]
    normalizer, Xn = fit_normalizer(X[tr], labels, speakers, settings.normalization,
                                    estimate_missing=settings.estimate_baselines)
    y = np.asarray([classes.index(c) for c in labels])
    corpora = manifest.corpora[tr]
    Xs, ys, cs = [Xn], [y], [corpora]
    for Xa in X_aug:
        # augmented copies, normalised with the same speaker shifts (their clean enrolment baselines)
        if settings.normalization == "enrolment":
            # enrolled in the same conditions: the baseline of an augmented copy is the mean of the
            # speaker's augmented neutral/calm clips (a patient enrols in the room they are monitored in)
            base = baselines_from_clips(Xa[tr], labels, speakers)
            Xs.append(normalize_speakers(normalizer, Xa[tr], speakers, base))
        else:
            Xs.append(normalizer.apply(Xa[tr]))
        ys.append(y)
        cs.append(corpora)
    return normalizer, np.concatenate(Xs), np.concatenate(ys), np.concatenate(cs)


def validation_rows(normalizer: FeatureNormalizer, X: np.ndarray, manifest: Manifest, classes: Sequence[str],
                    normalization: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(normalised features, class indices, kept mask) of validation clips whose label is a training class;
    with enrolment, each speaker is normalised with the baseline of their own neutral/calm clips."""
    labels = manifest.labels
    base = baselines_from_clips(X, labels, manifest.speakers) if normalization == "enrolment" else {}
    keep = np.isin(labels, list(classes))
    Xv = normalize_speakers(normalizer, X, manifest.speakers, base)[keep]
    yv = np.asarray([list(classes).index(c) for c in labels[keep]])
    return Xv, yv, keep


def _fit_lr(X: np.ndarray, y: np.ndarray, corpora: np.ndarray, classes: Sequence[str], balance: str) -> Any:
    from sklearn.linear_model import LogisticRegression

    from training.sampling import sample_weights

    w = sample_weights([classes[i] for i in y], corpora, balance) * len(y)
    clf = LogisticRegression(C=0.1, max_iter=2000)
    clf.fit(X, y, sample_weight=w)
    return clf


def fit_model(X: np.ndarray, manifest: Manifest, settings: Settings, val_mask: np.ndarray | None = None,
              X_aug: Sequence[np.ndarray] | None = None, seed: int = 0) -> FittedModel:
    """Fit normaliser and classifier on the training rows of ``X`` (``val_mask`` rows only validate)."""
    from training.train import train_head

    val_mask = np.zeros(len(X), bool) if val_mask is None else val_mask
    tr = ~val_mask
    classes = sorted(set(manifest.labels[tr].tolist()))
    normalizer, Xtr, ytr, ctr = training_rows(X, manifest, tr, classes, settings, X_aug or [])
    Xv = yv = None
    if val_mask.any():
        Xv, yv, _ = validation_rows(normalizer, X[val_mask], manifest[val_mask], classes, settings.normalization)
    heads = []
    for k in range(settings.ensemble):
        if settings.model == "lr":
            heads.append(_fit_lr(Xtr, ytr, ctr, classes, settings.balance))
        else:
            config = settings.train_config("egemaps", seed=seed * 100 + k, device="cpu")
            heads.append(train_head(Xtr, ytr, classes, config, Xv, yv, corpora=ctr)[0])
    return FittedModel(classes, normalizer, heads, settings.model)


# ---------------------------------------------------------------------------------------
# evaluation


def loo_baselines(X: np.ndarray, labels: np.ndarray, speakers: np.ndarray,
                  emotions: Sequence[str] = BASELINE_EMOTIONS, clips: np.ndarray | None = None
                  ) -> list[SpeakerBaseline | None]:
    """Per row: the mean of its speaker's neutral/calm rows, leaving out the rows of its own clip.

    ``clips`` groups rows (a clip's segments); without it every row is its own clip.
    """
    clips = np.arange(len(X)).astype(str) if clips is None else np.asarray(clips)
    out: list[SpeakerBaseline | None] = [None] * len(X)
    for spk in np.unique(speakers):
        idx = np.flatnonzero(speakers == spk)
        base = idx[np.isin(labels[idx], list(emotions))]
        if base.size == 0:
            continue
        for clip in np.unique(clips[idx]):
            rows = idx[clips[idx] == clip]
            others = base[clips[base] != clip]
            if not others.size:
                continue
            baseline = SpeakerBaseline(mean=X[others].mean(axis=0), n_segments=int(others.size), seconds=0.0,
                                       model_id="", composition=composition_of(labels[others]))
            for i in rows:
                out[i] = baseline
    return out


def predict_clips(model: FittedModel, X: np.ndarray, manifest: Manifest,
                  normalization: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities and embeddings of test items, each with its (leave-one-clip-out) enrolment baseline;
    ``normalization="unenrolled"``: no baseline for anyone (population statistics, as for a new patient)."""
    if normalization == "enrolment":
        bases = loo_baselines(X, manifest.labels, manifest.speakers, clips=manifest.clips)
    else:
        bases = [None] * len(X)
    xn = np.stack([model.normalizer.apply(X[i:i + 1], bases[i])[0] for i in range(len(X))])
    return model.predict_normalized(xn)


def points_from(model: FittedModel, probs: np.ndarray, emb: np.ndarray | None, reducer: Any = None) -> np.ndarray:
    """(valence, arousal) points: the reducer's transform of the embeddings, else the expected anchor."""
    if reducer is not None and emb is not None:
        return np.asarray(reducer.transform(emb))[:, :2]
    return expected_anchor(probs, model.labels, ANCHORS)


def clip_level(manifest: Manifest, probs: np.ndarray, points: np.ndarray
               ) -> tuple[Manifest, np.ndarray, np.ndarray]:
    """Segments averaged back into their clips, weighted by duration (whole clips pass through)."""
    if not len(manifest) or not manifest[0].is_segment:
        return manifest, probs, points
    clips = manifest.clips
    weights = np.maximum(manifest.durations, 1e-3)
    order = list(dict.fromkeys(clips.tolist()))
    items, p_out, q_out = [], [], []
    for clip in order:
        rows = np.flatnonzero(clips == clip)
        w = weights[rows] / weights[rows].sum()
        items.append(replace(manifest[int(rows[0])], start=math.nan, end=math.nan, utterance="", clip=""))
        p_out.append(w @ probs[rows])
        q_out.append(w @ points[rows])
    return Manifest(items, list(manifest.skipped)), np.asarray(p_out), np.asarray(q_out)


def score(model: FittedModel, probs: np.ndarray, points: np.ndarray, manifest: Manifest,
          test_corpus: str) -> dict[str, float]:
    """The metrics of one test set: clip-level (segments averaged back), plus ``seg_*`` for segments."""
    out: dict[str, float] = {}
    if len(manifest) and manifest[0].is_segment:
        seg = _score_items(model, probs, points, manifest, test_corpus)
        out.update({f"seg_{k}": seg[k] for k in ("uar", "ccc_valence", "ccc_arousal")})
        manifest, probs, points = clip_level(manifest, probs, points)
    out.update(_score_items(model, probs, points, manifest, test_corpus))
    out.update(lean(points, manifest.labels))
    return out


def lean(points: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Where a speaker's "nothing special" lands: the valence bias and the neutral clips' centroid."""
    anchors = np.asarray([ANCHORS[c] for c in labels], dtype=np.float64)
    out = {"valence_bias": float(points[:, 0].mean() - anchors[:, 0].mean()),
           "arousal_bias": float(points[:, 1].mean() - anchors[:, 1].mean())}
    neutral = labels == "neutral"
    if neutral.any():
        centre = points[neutral].mean(axis=0)
        out.update(neutral_v=float(centre[0]), neutral_a=float(centre[1]), neutral_r=float(np.hypot(*centre)))
    return out


def _score_items(model: FittedModel, probs: np.ndarray, points: np.ndarray, manifest: Manifest,
                 test_corpus: str) -> dict[str, float]:
    """UAR over the test corpus's classes the model knows, CCC, boundary, ECE, intensity."""
    labels = manifest.labels
    allowed = list(get_anchor_set(ANCHOR_SET_OF[test_corpus]).labels)
    truth = labels.copy()
    scored_allowed = [c for c in allowed if c in model.labels]
    if "calm" in allowed and "calm" not in model.labels:  # corpus:ravdess, calm scored as neutral
        truth = np.where(truth == "calm", "neutral", truth)
    known = np.isin(truth, scored_allowed)  # a class no training corpus has (JL's excited) cannot be recalled
    pred = restricted_predictions(probs[known], model.labels, scored_allowed)
    out = {"uar": uar(truth[known], pred), "wa": weighted_accuracy(truth[known], pred),
           "uar_unrestricted": uar(labels, np.asarray(model.labels)[np.argmax(probs, axis=1)])}
    if not np.array_equal(truth, labels):
        out["uar_strict"] = uar(labels[known], pred)
    ccc = anchor_agreement(points, labels, ANCHORS)
    out["ccc_valence"], out["ccc_arousal"] = ccc["valence"], ccc["arousal"]
    out["boundary"] = boundary_share(points)
    in_model = np.isin(labels, model.labels)
    if in_model.any():
        targets = np.asarray([model.labels.index(c) for c in labels[in_model]])
        out["ece"] = expected_calibration_error(probs[in_model], targets)
    if test_corpus == "ravdess":
        inten = intensity_check(points[:, 1], manifest.column("intensity"), manifest.speakers,
                                manifest.column("sentence"), labels)
        out["intensity"] = float(inten["share"])
    return out


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = 10) -> float:
    """ECE: |confidence - accuracy| of the arg-max class, averaged over equal-width confidence bins."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == targets
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(conf[m].mean() - correct[m].mean())
    return float(ece)


def persistent_mood(model: FittedModel, X: np.ndarray, manifest: Manifest, normalization: str, reducer: Any = None,
                    seed: int = 0) -> dict[str, float]:
    """Persistent-mood ratios on the test speakers that have enrolment clips."""

    def predict(raw: np.ndarray, baseline: SpeakerBaseline | np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
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


def available_protocols(manifest: Manifest) -> list[str]:
    """The protocols whose corpora are in the manifest (speakers: RAVDESS; corpus:*: RAVDESS and EMOVO)."""
    present = set(manifest.corpora.tolist())
    needs = {"speakers": {"ravdess"}, "corpus:emovo": {"ravdess", "emovo"}, "corpus:ravdess": {"ravdess", "emovo"},
             "corpus:jl": {"ravdess", "emovo", "jl"}}
    return [p for p in PROTOCOLS if needs[p] <= present]


def _fold_row(X: np.ndarray, manifest: Manifest, split: tuple[str, np.ndarray, np.ndarray, np.ndarray],
              settings: Settings, seed: int, X_aug: Sequence[np.ndarray], with_reducer: bool, mood: bool,
              mood_control: bool) -> Row:
    """Fit one fold of a protocol and score its test clips: the metrics of a row."""
    _, tr, val, test = split
    if X.ndim == 3:  # per-layer features: the layer weights are fitted on this fold's training rows only
        mix = fit_mix(X, X_aug, manifest, tr, settings, seed)
        X, X_aug = mix.transform(X), [mix.transform(Xa) for Xa in X_aug]
    fit_rows = tr | val
    model = fit_model(X[fit_rows], manifest[fit_rows], settings, val_mask=val[fit_rows],
                      X_aug=[Xa[fit_rows] for Xa in X_aug], seed=seed)
    test_m = manifest[test]
    test_corpus = str(test_m.corpora[0])
    probs, emb = predict_clips(model, X[test], test_m, settings.normalization)
    reducer = None
    if with_reducer and emb is not None:
        params, on_val = settings.reducer_kwargs(manifest.speakers[val].tolist())
        reducer = fit_reducer_on(model, X[tr], manifest[tr], settings.normalization,
                                 X_align=X[val] if on_val else None, manifest_align=manifest[val] if on_val else None,
                                 **params)
    points = points_from(model, probs, emb, reducer)
    row: Row = dict(score(model, probs, points, test_m, test_corpus))
    if settings.normalization == "enrolment":  # the same speakers, never enrolled
        probs_u, emb_u = predict_clips(model, X[test], test_m, "unenrolled")
        row.update({f"unenrolled_{k}": v for k, v in
                    score(model, probs_u, points_from(model, probs_u, emb_u, reducer), test_m, test_corpus).items()})
    if mood:
        pm = persistent_mood(model, X[test], test_m, settings.normalization, reducer, seed=seed)
        row.update({f"mood_{k}": v for k, v in pm.items() if k.endswith("ratio")})
        if mood_control:
            pm = persistent_mood(model, X[test], test_m, "self", reducer, seed=seed)
            row.update({f"mood_self_{k}": v for k, v in pm.items()})
    return row


def fit_mix(X: np.ndarray, X_aug: Sequence[np.ndarray], manifest: Manifest, tr: np.ndarray, settings: Settings,
            seed: int) -> LayerMix:
    """Layer statistics and weights from the training rows (and their augmented copies) of per-layer features."""
    layers = np.concatenate([X[tr], *(Xa[tr] for Xa in X_aug)])
    copies = 1 + len(X_aug)
    return fit_layer_mix(layers, np.tile(manifest.labels[tr], copies).tolist(),
                         np.tile(manifest.corpora[tr], copies).tolist(), mode=settings.layer_mix,
                         balance=settings.balance, seed=seed)


def run_protocol(X: np.ndarray, manifest: Manifest, protocol: str, settings: Settings, seeds: Sequence[int] = (0,),
                 X_aug: Sequence[np.ndarray] | None = None, with_reducer: bool = False, mood: bool = True,
                 mood_control: bool = False) -> list[Row]:
    """Fit and score every fold x seed of a protocol. ``mood_control`` also replays the persistent-mood
    sessions with self-normalisation (columns ``mood_self_*``), the control that must fail."""
    import torch

    torch.set_num_threads(1)  # a small head on features: extra threads only contend
    rows = []
    for seed in seeds:
        for split in protocol_splits(manifest, protocol):
            t0 = time.time()
            metrics = _fold_row(X, manifest, split, settings, seed, X_aug or [], with_reducer, mood, mood_control)
            row: Row = {"protocol": protocol, "fold": split[0], "seed": seed, **metrics,
                        "seconds": round(time.time() - t0, 1)}
            rows.append(row)
            log.info(json.dumps(row))
    return rows


def embed_clips(model: FittedModel, X: np.ndarray, manifest: Manifest, normalization: str) -> np.ndarray:
    """Embeddings of clips, each with its speaker's leave-one-out enrolment baseline (as the runtime would)."""
    emb = predict_clips(model, X, manifest, normalization)[1]
    if emb is None:
        raise ValueError("this model has no embeddings (--model lr)")
    return emb


def fit_reducer_on(model: FittedModel, X: np.ndarray, manifest: Manifest, normalization: str,
                   X_align: np.ndarray | None = None, manifest_align: Manifest | None = None, **params: Any) -> Any:
    """Fit the Stage II reducer on the training embeddings (as ``training.export`` does for a bundle).

    With ``X_align``/``manifest_align`` (held-out speakers' raw features, e.g. the early-stopping
    speakers) and an ``align`` in ``params``, the alignment is fitted on their embeddings.
    """
    from training.export import fit_reducer

    emb = embed_clips(model, X, manifest, normalization)
    if X_align is not None and manifest_align is not None and len(X_align) and params.get("align"):
        emb_align = embed_clips(model, X_align, manifest_align, normalization)
        return fit_reducer(emb, manifest.labels, X_align=emb_align, y_align=manifest_align.labels, **params)
    return fit_reducer(emb, manifest.labels, **params)


#: Per protocol, per metric: mean, std, min, max (floats) and n (int).
Summary = dict[str, dict[str, dict[str, float]]]


def summarize(rows: Sequence[Row]) -> Summary:
    """mean, std, min, max of every numeric column per protocol."""
    out: Summary = {}
    for protocol in sorted(set(r["protocol"] for r in rows)):
        rs = [r for r in rows if r["protocol"] == protocol]
        keys = [k for k in rs[0] if isinstance(rs[0][k], float) and k != "seconds"]
        out[protocol] = {}
        for k in keys:
            v = np.asarray([r[k] for r in rs if k in r], dtype=np.float64)
            out[protocol][k] = {"mean": float(np.nanmean(v)), "std": float(np.nanstd(v)), "min": float(np.nanmin(v)),
                                "max": float(np.nanmax(v)), "n": int(np.isfinite(v).sum())}
    return out


def format_summary(summary: Summary) -> str:
    """One line per protocol and metric: mean ± std (min, max, n)."""
    lines = []
    for protocol, cols in summary.items():
        lines.append(f"[{protocol}]")
        for k, s in cols.items():
            lines.append(f"  {k:24s} {s['mean']:.3f} ± {s['std']:.3f}  (min {s['min']:.3f}, max {s['max']:.3f}, "
                         f"n={s['n']})")
    return "\n".join(lines)
