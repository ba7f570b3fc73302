"""The training side of speaker calibration, and the persistent-mood check.

Training with ``normalization="enrolment"`` shifts each training speaker that
has baseline speech (neutral or calm clips: RAVDESS, EMOVO, EmoDB, ...) so
that their baseline lands on the population's baseline, exactly as the runtime
shifts an enrolled patient (``FeatureNormalizer.apply(x, baseline)``). Speakers
without baseline clips (JL-Corpus here) are left unshifted, as the runtime
leaves a patient without an enrolment.

Self-normalisation (re-centring a speaker on the mean of *their monitored
speech*) is implemented here only as a control for the persistent-mood check:
it is what fails that check, and the runtime has no such mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from calibration.speaker import BASELINE_EMOTIONS, FeatureNormalizer, SpeakerBaseline


def enrolment_masks(labels: Sequence[str], speakers: Sequence[str],
                    emotions: Sequence[str] = BASELINE_EMOTIONS) -> dict[str, np.ndarray]:
    """speaker -> boolean mask of that speaker's baseline (enrolment) clips; speakers without any are absent."""
    labels = np.asarray(labels)
    speakers = np.asarray(speakers)
    out = {}
    for spk in np.unique(speakers):
        mask = (speakers == spk) & np.isin(labels, list(emotions))
        if mask.any():
            out[str(spk)] = mask
    return out


def baselines_from_clips(features: np.ndarray, labels: Sequence[str], speakers: Sequence[str], model_id: str = "",
                         emotions: Sequence[str] = BASELINE_EMOTIONS, seconds: Sequence[float] | None = None,
                         ) -> dict[str, SpeakerBaseline]:
    """One :class:`SpeakerBaseline` per speaker from the mean features of their neutral/calm clips."""
    features = np.asarray(features, dtype=np.float64)
    out = {}
    for spk, mask in enrolment_masks(labels, speakers, emotions).items():
        secs = float(np.sum(np.asarray(seconds)[mask])) if seconds is not None else 0.0
        out[spk] = SpeakerBaseline(mean=features[mask].mean(axis=0), n_segments=int(mask.sum()), seconds=secs,
                                   model_id=model_id, source="training corpus " + "/".join(emotions) + " clips")
    return out


def estimated_baselines(features: np.ndarray, labels: Sequence[str], speakers: Sequence[str],
                        known: dict[str, SpeakerBaseline], emotions: Sequence[str] = BASELINE_EMOTIONS,
                        ) -> dict[str, SpeakerBaseline]:
    """Baselines for *training* speakers who have no neutral/calm clips (JL-Corpus), estimated from their other clips.

    For such a speaker s, with the emotions E that s shares with the enrolled speakers:
    baseline(s) = mean_{e in E} mean(s, e) - mean_t [mean_{e in E} mean(t, e) - baseline(t)], over the
    enrolled speakers t that have every emotion in E. It is the speaker's own emotion-balanced mean, moved
    by the average distance between that mean and the neutral/calm baseline of the enrolled speakers.
    Training data only: a monitored patient is never re-centred on their own speech.
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    speakers = np.asarray(speakers)
    out = {}
    enrolled = [t for t in known if t in set(speakers.tolist())]
    for spk in np.unique(speakers):
        if str(spk) in known:
            continue
        mine = set(labels[(speakers == spk) & ~np.isin(labels, list(emotions))].tolist())
        refs = [t for t in enrolled if mine & set(labels[speakers == t].tolist())]
        common = sorted(set.intersection(mine, *[set(labels[speakers == t].tolist()) for t in refs])) if refs else []
        if not common:
            continue

        def balanced_mean(who):
            return np.mean([features[(speakers == who) & (labels == e)].mean(axis=0) for e in common], axis=0)

        delta = np.mean([balanced_mean(t) - known[t].mean for t in refs], axis=0)
        out[str(spk)] = SpeakerBaseline(mean=balanced_mean(spk) - delta, n_segments=int((speakers == spk).sum()),
                                        seconds=0.0, model_id="", source="estimated from " + "/".join(common) + " clips")
    return out


def fit_normalizer(features: np.ndarray, labels: Sequence[str], speakers: Sequence[str], mode: str,
                   estimate_missing: bool = False) -> tuple[FeatureNormalizer, np.ndarray]:
    """Fit a :class:`FeatureNormalizer` on training features and return it with the normalised training features.

    ``mode="enrolment"``: each speaker with baseline clips is shifted onto the
    population reference (mean of all neutral/calm training clips) before the
    population statistics are fitted, then normalised as the runtime would
    normalise an enrolled speaker. ``estimate_missing`` also shifts training
    speakers without such clips, by :func:`estimated_baselines`.
    """
    features = np.asarray(features, dtype=np.float64)
    normalizer = FeatureNormalizer(mode)
    if mode == "none":
        return normalizer, features.astype(np.float32)
    if mode == "population":
        normalizer.fit(features, labels)
        return normalizer, normalizer.apply(features)
    if mode != "enrolment":
        raise ValueError(f"unknown normalization mode {mode!r}")
    labels = np.asarray(labels)
    is_base = np.isin(labels, list(BASELINE_EMOTIONS))
    reference = features[is_base].mean(axis=0) if is_base.any() else features.mean(axis=0)
    baselines = baselines_from_clips(features, labels, speakers)
    if estimate_missing:
        baselines.update(estimated_baselines(features, labels, speakers, baselines))
    shifted = features.copy()
    speakers = np.asarray(speakers)
    for spk, base in baselines.items():
        shifted[speakers == spk] += reference - base.mean
    normalizer.fit(shifted, labels)
    # apply() adds reference_ - baseline; reference_ of the shifted data equals `reference` up to rounding
    return normalizer, normalize_speakers(normalizer, features, speakers, baselines)


def normalize_speakers(normalizer: FeatureNormalizer, features: np.ndarray, speakers: Sequence[str],
                       baselines: dict[str, SpeakerBaseline | np.ndarray] | None = None) -> np.ndarray:
    """Apply the runtime normalisation to clips of several speakers, each with their own (optional) baseline."""
    speakers = np.asarray(speakers)
    out = np.empty(np.asarray(features).shape, dtype=np.float32)
    for spk in np.unique(speakers):
        m = speakers == spk
        out[m] = normalizer.apply(np.asarray(features)[m], (baselines or {}).get(str(spk)))
    return out


# ---------------------------------------------------------------------------------------
# persistent mood


@dataclass
class SessionResult:
    """Predictions for every evaluated clip, within one-emotion sessions and within mixed sessions."""

    labels: np.ndarray
    probs_single: np.ndarray
    probs_mixed: np.ndarray
    points_single: np.ndarray
    points_mixed: np.ndarray


def replay_sessions(features: np.ndarray, labels: Sequence[str], speakers: Sequence[str],
                    predict: Callable[[np.ndarray, SpeakerBaseline | np.ndarray | None], tuple[np.ndarray, np.ndarray]],
                    normalization: str = "enrolment", enrol_emotions: Sequence[str] = BASELINE_EMOTIONS,
                    seed: int = 0) -> SessionResult:
    """Replay each speaker's non-enrolment clips as sessions and predict them.

    ``predict(raw_features, baseline) -> (probabilities, points)`` is the
    runtime path (normaliser + head + reducer). For each speaker the enrolment
    baseline comes from their ``enrol_emotions`` clips, which are then *not*
    evaluated. Two replays of the same clips: one session per emotion (a
    persistent mood) and one mixed session (shuffled).

    ``normalization``: "enrolment" uses the enrolment baseline (what the
    runtime does); "population" uses none; "self" re-centres on the mean of
    the session's own speech (the control that must fail).
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    speakers = np.asarray(speakers)
    rng = np.random.default_rng(seed)
    out_labels, ps, pm, qs, qm = [], [], [], [], []

    def baseline_for(session_x: np.ndarray, enrol: np.ndarray | None):
        if normalization == "enrolment":
            return enrol
        if normalization == "self":
            return session_x.mean(axis=0)
        return None

    for spk in np.unique(speakers):
        is_spk = speakers == spk
        is_enrol = is_spk & np.isin(labels, list(enrol_emotions))
        evaluate = np.flatnonzero(is_spk & ~is_enrol)
        if evaluate.size == 0:
            continue
        enrol = features[is_enrol].mean(axis=0) if is_enrol.any() else None
        # mixed session: all evaluated clips in a shuffled order
        order = rng.permutation(evaluate)
        p_mixed, q_mixed = predict(features[order], baseline_for(features[order], enrol))
        mixed_p = dict(zip(order.tolist(), p_mixed))
        mixed_q = dict(zip(order.tolist(), q_mixed))
        for emo in np.unique(labels[evaluate]):
            sess = evaluate[labels[evaluate] == emo]
            p_single, q_single = predict(features[sess], baseline_for(features[sess], enrol))
            for j, i in enumerate(sess.tolist()):
                out_labels.append(labels[i])
                ps.append(p_single[j])
                qs.append(q_single[j])
                pm.append(mixed_p[i])
                qm.append(mixed_q[i])
    return SessionResult(np.asarray(out_labels), np.asarray(ps), np.asarray(pm), np.asarray(qs), np.asarray(qm))


def persistent_mood_scores(result: SessionResult, class_labels: Sequence[str],
                           anchors: dict[str, tuple[float, float]]) -> dict[str, float]:
    """UAR and anchor CCC of the same clips in one-emotion vs mixed sessions, and their ratios."""
    from training.metrics import anchor_ccc, uar

    class_labels = list(class_labels)
    present = sorted(set(result.labels.tolist()))
    cols = [class_labels.index(c) for c in present if c in class_labels]
    names = [class_labels[c] for c in cols]

    def predicted(p):
        return np.asarray(names)[np.argmax(p[:, cols], axis=1)]

    out = {}
    for name, probs, points in (("single", result.probs_single, result.points_single),
                                ("mixed", result.probs_mixed, result.points_mixed)):
        out[f"uar_{name}"] = uar(result.labels, predicted(probs))
        ccc = anchor_ccc(points, result.labels, anchors)
        out[f"ccc_valence_{name}"] = ccc["valence"]
        out[f"ccc_arousal_{name}"] = ccc["arousal"]
    for key in ("uar", "ccc_valence", "ccc_arousal"):
        mixed = out[f"{key}_mixed"]
        out[f"{key}_ratio"] = float(out[f"{key}_single"] / mixed) if mixed > 1e-9 else float("nan")
    return out
