"""The persistent-mood check: a mood that lasts must not be calibrated away.

Self-normalisation (re-centring a speaker on the mean of *their monitored
speech*) is implemented here only as a control for this check: it is what
fails it, and the runtime has no such mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from calibration.metrics import anchor_agreement, uar
from calibration.speaker import BASELINE_EMOTIONS, SpeakerBaseline, composition_of

#: ``predict(raw_features, baseline) -> (probabilities, points)``: the runtime path replayed.
Predict = Callable[[np.ndarray, SpeakerBaseline | np.ndarray | None], tuple[np.ndarray, np.ndarray]]


@dataclass
class SessionResult:
    """Predictions for every evaluated clip, within one-emotion sessions and within mixed sessions."""

    labels: np.ndarray
    probs_single: np.ndarray
    probs_mixed: np.ndarray
    points_single: np.ndarray
    points_mixed: np.ndarray


def replay_sessions(features: np.ndarray, labels: ArrayLike, speakers: ArrayLike, predict: Predict,
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
    label_of = np.asarray(labels)
    speaker_of = np.asarray(speakers)
    rng = np.random.default_rng(seed)
    out_labels, ps, pm, qs, qm = [], [], [], [], []

    def baseline_for(session_x: np.ndarray, enrol: SpeakerBaseline | None) -> SpeakerBaseline | np.ndarray | None:
        if normalization == "enrolment":
            return enrol
        if normalization == "self":
            return np.asarray(session_x.mean(axis=0))
        return None

    for spk in np.unique(speaker_of):
        is_spk = speaker_of == spk
        is_enrol = is_spk & np.isin(label_of, list(enrol_emotions))
        evaluate = np.flatnonzero(is_spk & ~is_enrol)
        if evaluate.size == 0:
            continue
        enrol = SpeakerBaseline(mean=features[is_enrol].mean(axis=0), n_segments=int(is_enrol.sum()), seconds=0.0,
                                model_id="", composition=composition_of(label_of[is_enrol])) if is_enrol.any() else None
        # mixed session: all evaluated clips in a shuffled order
        order = rng.permutation(evaluate)
        p_mixed, q_mixed = predict(features[order], baseline_for(features[order], enrol))
        mixed_p = dict(zip(order.tolist(), p_mixed, strict=True))
        mixed_q = dict(zip(order.tolist(), q_mixed, strict=True))
        for emo in np.unique(label_of[evaluate]):
            sess = evaluate[label_of[evaluate] == emo]
            p_single, q_single = predict(features[sess], baseline_for(features[sess], enrol))
            for j, i in enumerate(sess.tolist()):
                out_labels.append(label_of[i])
                ps.append(p_single[j])
                qs.append(q_single[j])
                pm.append(mixed_p[i])
                qm.append(mixed_q[i])
    return SessionResult(np.asarray(out_labels), np.asarray(ps), np.asarray(pm), np.asarray(qs), np.asarray(qm))


def persistent_mood_scores(result: SessionResult, class_labels: Sequence[str],
                           anchors: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """UAR and anchor CCC of the same clips in one-emotion vs mixed sessions, and their ratios."""
    classes = list(class_labels)
    present = sorted(set(result.labels.tolist()))
    cols = [classes.index(c) for c in present if c in classes]
    names = [classes[c] for c in cols]

    def predicted(p: np.ndarray) -> np.ndarray:
        return np.asarray(np.asarray(names)[np.argmax(p[:, cols], axis=1)])

    out = {}
    for name, probs, points in (("single", result.probs_single, result.points_single),
                                ("mixed", result.probs_mixed, result.points_mixed)):
        out[f"uar_{name}"] = uar(result.labels, predicted(probs))
        ccc = anchor_agreement(points, result.labels, anchors)
        out[f"ccc_valence_{name}"] = ccc["valence"]
        out[f"ccc_arousal_{name}"] = ccc["arousal"]
    for key in ("uar", "ccc_valence", "ccc_arousal"):
        mixed = out[f"{key}_mixed"]
        out[f"{key}_ratio"] = float(out[f"{key}_single"] / mixed) if mixed > 1e-9 else float("nan")
    return out
