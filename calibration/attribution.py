"""Whose voice a segment is: voiceprints and the attribution rule (numpy only).

A therapy-room microphone hears two people. Each speech segment gets a speaker
embedding from a speaker encoder (``monitor.model.voiceprint``); this module
compares it with the enrolled voiceprints and decides ``patient``,
``clinician`` or ``unknown``:

- a segment shorter than ``min_seconds`` is ``unknown`` (a back-channel such as
  "mm-hm" carries too little voice to tell who said it);
- with one voice enrolled, its cosine must reach ``threshold``; a segment that does not is ``unknown``:
  the rule never calls a clear non-match the patient;
- with both voices enrolled, the decision is between two known voices: the winner must beat the other
  by ``margin`` (overlapped or ambiguous speech lands between the two) and reach ``pair_threshold``, a
  floor that keeps a third voice (a relative in the room, a television) out of both.

The defaults are calibrated on the developer corpora's synthetic sessions, per speaker encoder
(:data:`CALIBRATED`, ``benchmarks/bench_speakers.py``, docs/benchmarks/speakers_quick.md): cosines of different
encoders live on different scales, so another encoder must be recalibrated.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

PATIENT = "patient"
CLINICIAN = "clinician"
UNKNOWN = "unknown"
SPEAKERS = (PATIENT, CLINICIAN, UNKNOWN)


class VoiceprintError(ValueError):
    """A voiceprint that cannot be used: empty, malformed, or from another encoder than the segment's embedding."""


def l2_normalize(vectors: ArrayLike, axis: int = -1) -> np.ndarray:
    """Unit vectors along ``axis``; an all-zero vector stays zero."""
    array = np.asarray(vectors, dtype=np.float64)
    norm = np.linalg.norm(array, axis=axis, keepdims=True)
    return np.asarray(np.divide(array, norm, out=np.zeros_like(array), where=norm > 0))


def cosine_scores(embeddings: ArrayLike, reference: ArrayLike) -> np.ndarray:
    """Cosine of each row of ``embeddings`` ([n, d] or [d]) with the vector ``reference`` ([d]): [n] (or a scalar)."""
    emb = l2_normalize(embeddings)
    ref = l2_normalize(np.asarray(reference, dtype=np.float64).reshape(-1))
    if emb.shape[-1] != ref.shape[0]:
        raise VoiceprintError(f"embedding dimension {emb.shape[-1]} does not match the voiceprint's {ref.shape[0]}")
    return np.asarray(emb @ ref)


@dataclass
class Voiceprint:
    """One speaker's voice: the mean speaker embedding of their enrolment speech, for one encoder.

    ``encoder`` and ``encoder_version`` tie the voiceprint to the encoder that made it (name, and the
    package version with the weights' hash): scores against another encoder's embeddings mean nothing.
    """

    vector: np.ndarray
    n_segments: int
    seconds: float
    encoder: str
    encoder_version: str = ""
    source: str = ""
    created: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        vector = np.asarray(self.vector, dtype=np.float32).reshape(-1)
        if vector.size == 0 or not np.all(np.isfinite(vector)) or float(np.linalg.norm(vector)) == 0.0:
            raise VoiceprintError("a voiceprint needs a finite, non-zero vector")
        norm = float(np.linalg.norm(vector.astype(np.float64)))
        # already unit length (as read back from JSON): keep the values bit for bit
        self.vector = vector if abs(norm - 1.0) < 1e-5 else (vector / norm).astype(np.float32)
        if self.n_segments < 1 or self.seconds <= 0:
            raise VoiceprintError("a voiceprint needs at least one segment of speech")

    @property
    def dim(self) -> int:
        return int(self.vector.shape[0])

    @classmethod
    def from_embeddings(cls, embeddings: ArrayLike, seconds: ArrayLike, encoder: str, encoder_version: str = "",
                        source: str = "") -> "Voiceprint":
        """Duration-weighted mean of unit segment embeddings ([n, d]) with their lengths in seconds ([n])."""
        emb = l2_normalize(np.atleast_2d(np.asarray(embeddings, dtype=np.float64)))
        secs = np.asarray(seconds, dtype=np.float64).reshape(-1)
        if emb.shape[0] == 0 or emb.shape[0] != secs.shape[0]:
            raise VoiceprintError(f"need one length per embedding and at least one: {emb.shape[0]} vs {secs.shape[0]}")
        if np.any(secs <= 0):
            raise VoiceprintError("segment lengths must be positive")
        mean = (emb * secs[:, None]).sum(axis=0) / secs.sum()
        return cls(vector=mean, n_segments=int(emb.shape[0]), seconds=float(secs.sum()), encoder=encoder,
                   encoder_version=encoder_version, source=source)

    def score(self, embeddings: ArrayLike) -> np.ndarray:
        """Cosine of each embedding with this voiceprint."""
        return cosine_scores(embeddings, self.vector)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "voiceprint",
            "encoder": self.encoder,
            "encoder_version": self.encoder_version,
            "dim": self.dim,
            "vector": [float(x) for x in self.vector],
            "n_segments": int(self.n_segments),
            "seconds": float(self.seconds),
            "source": self.source,
            "created": float(self.created),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Voiceprint":
        if data.get("kind", "voiceprint") != "voiceprint":
            raise VoiceprintError(f"not a voiceprint: kind {data.get('kind')!r}")
        try:
            vector = np.asarray(data["vector"], dtype=np.float32)
            dim = int(data.get("dim", vector.shape[0]))
            print_ = cls(vector=vector, n_segments=int(data["n_segments"]), seconds=float(data["seconds"]),
                         encoder=str(data["encoder"]), encoder_version=str(data.get("encoder_version", "")),
                         source=str(data.get("source", "")), created=float(data.get("created", time.time())))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, VoiceprintError):
                raise
            raise VoiceprintError(f"malformed voiceprint: {exc}") from exc
        if print_.dim != dim:
            raise VoiceprintError(f"voiceprint says dim {dim} but holds {print_.dim} values")
        return print_

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "Voiceprint":
        return cls.from_json(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class AttributionConfig:
    """The attribution rule's settings (see the module doc); :meth:`calibrated` gives an encoder's defaults.

    threshold: with one voice enrolled, the cosine a segment must reach to be that speaker.
    margin: with both voices enrolled, how much the winner's cosine must exceed the other's.
    min_seconds: shorter segments are unknown (back-channels, fragments).
    pair_threshold: with both voices enrolled, the cosine the winner must reach (None: ``threshold``).
    """

    threshold: float = 0.5
    margin: float = 0.0
    min_seconds: float = 1.0
    pair_threshold: float | None = None

    def __post_init__(self) -> None:
        for name in ("threshold", "pair_threshold"):
            value = getattr(self, name)
            if value is not None and not -1.0 <= value <= 1.0:
                raise ValueError(f"{name} is a cosine in [-1, 1], got {value}")
        if self.margin < 0 or self.min_seconds < 0:
            raise ValueError("margin and min_seconds must be >= 0")

    @property
    def floor(self) -> float:
        """The cosine the winner must reach when both voices are enrolled."""
        return self.threshold if self.pair_threshold is None else self.pair_threshold

    @classmethod
    def calibrated(cls, encoder: str) -> "AttributionConfig":
        """The defaults calibrated for a speaker encoder (by its name); an unknown encoder is an error, since
        cosines of an uncalibrated encoder mean nothing to the rule."""
        try:
            return CALIBRATED[encoder]
        except KeyError:
            raise VoiceprintError(f"no attribution settings are calibrated for the speaker encoder {encoder!r} "
                                  f"(calibrated: {', '.join(sorted(CALIBRATED))}); run benchmarks/bench_speakers.py "
                                  "with it and pass an AttributionConfig") from None


#: Per speaker encoder, the settings ``benchmarks/bench_speakers.py`` chose on all synthetic sessions of the
#: developer corpora (selection rule and leave-one-corpus-out results: docs/benchmarks/speakers_quick.md).
CALIBRATED: dict[str, AttributionConfig] = {
    # ECAPA-TDNN (--quick run; segments cut at speaker changes when both voices are enrolled): chosen with
    # each corpus group left out in turn, both voices enrolled, 93.5 % of the patient's speech went to the
    # patient, and 0.8 % of the clinician's (pooled); the pair threshold sits at its floor, the EER
    # threshold at 2 s, and the margin at 0: the sessions hold no simultaneous speech to argue for one.
    "ecapa-voxceleb": AttributionConfig(threshold=0.67, margin=0.0, min_seconds=0.5, pair_threshold=0.29),
    # GE2E (--quick run, same protocol): 49.6 % of the patient's speech to the patient at 1.9 % of the
    # clinician's, held out, both voices enrolled (pooled).
    "resemblyzer-ge2e": AttributionConfig(threshold=0.87, margin=0.08, min_seconds=0.5, pair_threshold=0.70),
}

#: Encoders whose held-out attribution with both voices enrolled came close enough to the targets (>= 95 % of
#: the patient's speech, <= 2 % of the clinician's; docs/benchmarks/speakers_quick.md) that counting the patient
#: only loses little of the patient: the default ``--count auto`` counts the patient only with these.
COUNTS_PATIENT_ONLY = frozenset({"ecapa-voxceleb"})


@dataclass(frozen=True)
class Attribution:
    """The decision for one segment.

    speaker: patient, clinician or unknown. speaker_score: the cosine with the voiceprint of the speaker
    named (for unknown: the best cosine among the enrolled voices; None when nothing was scored).
    patient_score / clinician_score: the cosines with each enrolled voiceprint (None: not enrolled or
    not scored). reason: why, in a word (match, short, below_threshold, ambiguous, no_voiceprint).
    """

    speaker: str
    speaker_score: float | None
    patient_score: float | None
    clinician_score: float | None
    reason: str


def _check_voiceprints(patient: Voiceprint | None, clinician: Voiceprint | None, dim: int) -> None:
    enrolled = [v for v in (patient, clinician) if v is not None]
    for v in enrolled:
        if v.dim != dim:
            raise VoiceprintError(f"{v.encoder} voiceprint has dimension {v.dim}, the embeddings {dim}")
    if len(enrolled) == 2 and (enrolled[0].encoder, enrolled[0].encoder_version) != (
            enrolled[1].encoder, enrolled[1].encoder_version):
        raise VoiceprintError("the patient's and the clinician's voiceprints come from different encoders: "
                              f"{enrolled[0].encoder} {enrolled[0].encoder_version} vs "
                              f"{enrolled[1].encoder} {enrolled[1].encoder_version}")


def decide(patient_score: float | None, clinician_score: float | None, seconds: float,
           config: AttributionConfig) -> Attribution:
    """The rule on precomputed cosines (None: that voice is not enrolled)."""
    cfg = config
    p, c = patient_score, clinician_score
    scored = [s for s in (p, c) if s is not None]
    best = max(scored) if scored else None
    if not scored:
        return Attribution(UNKNOWN, None, p, c, "no_voiceprint")
    if seconds < cfg.min_seconds:
        return Attribution(UNKNOWN, best, p, c, "short")
    if p is not None and c is not None:
        if p >= cfg.floor and p - c >= cfg.margin:
            return Attribution(PATIENT, p, p, c, "match")
        if c >= cfg.floor and c - p >= cfg.margin:
            return Attribution(CLINICIAN, c, p, c, "match")
        reason = "ambiguous" if max(p, c) >= cfg.floor else "below_threshold"
        return Attribution(UNKNOWN, best, p, c, reason)
    only, name = (p, PATIENT) if p is not None else (c, CLINICIAN)
    assert only is not None
    if only >= cfg.threshold:
        return Attribution(name, only, p, c, "match")
    return Attribution(UNKNOWN, only, p, c, "below_threshold")


def attribute(embeddings: ArrayLike, seconds: ArrayLike | float, patient: Voiceprint | None,
              clinician: Voiceprint | None = None, config: AttributionConfig | None = None) -> list[Attribution]:
    """One :class:`Attribution` per speaker embedding ([n, d] or [d]) with its segment's length in seconds.

    config: the rule's settings; None takes those calibrated for the voiceprints' encoder.
    """
    emb = np.atleast_2d(np.asarray(embeddings, dtype=np.float64))
    secs = np.broadcast_to(np.asarray(seconds, dtype=np.float64), (emb.shape[0],))
    _check_voiceprints(patient, clinician, emb.shape[1])
    enrolled = patient if patient is not None else clinician
    if enrolled is None:
        return [Attribution(UNKNOWN, None, None, None, "no_voiceprint") for _ in range(emb.shape[0])]
    cfg = config or AttributionConfig.calibrated(enrolled.encoder)
    p = patient.score(emb) if patient is not None else None
    c = clinician.score(emb) if clinician is not None else None
    return [decide(None if p is None else float(p[i]), None if c is None else float(c[i]), float(secs[i]), cfg)
            for i in range(emb.shape[0])]


#: Speaker changes inside a segment: windows of this length, this far apart, over segments at least twice
#: as long (a turn that short is not worth a cut); see :func:`speaker_change_cuts`.
CHANGE_WINDOW_S, CHANGE_HOP_S = 1.6, 0.4
#: With both voices enrolled, a cut where the window before leans to one voice and the window after to the
#: other by at least this much (patient score minus clinician score); compared in ``bench_speakers.py``.
CHANGE_LEAN = 0.15


def change_windows(seconds: float) -> np.ndarray:
    """Start times of the windows a segment of this length is searched with (empty: too short to cut)."""
    if seconds < 2 * CHANGE_WINDOW_S:
        return np.zeros(0)
    return np.arange(0.0, seconds - CHANGE_WINDOW_S + 1e-9, CHANGE_HOP_S)


def speaker_change_cuts(starts: ArrayLike, lean: ArrayLike, min_lean: float = CHANGE_LEAN,
                        max_cuts: int = 2) -> list[float]:
    """Where a segment changes from one enrolled voice to the other (seconds from its start, sorted).

    ``lean`` is each window's patient score minus its clinician score (windows at ``starts``, of
    :data:`CHANGE_WINDOW_S`). A cut goes between two adjacent non-overlapping windows that lean to different
    voices by at least ``min_lean`` each; the strongest flips first, at least a window apart, so every piece
    is at least a window long. Why: the VAD joins turns separated by a short pause, and a segment holding both
    voices can be attributed to neither (docs/benchmarks/speakers_quick.md measures the gain).
    """
    starts = np.asarray(starts, dtype=np.float64).reshape(-1)
    lean = np.asarray(lean, dtype=np.float64).reshape(-1)
    step = int(round(CHANGE_WINDOW_S / CHANGE_HOP_S))
    if len(starts) <= step:
        return []
    left, right, bounds = lean[:-step], lean[step:], starts[step:]
    flip = ((left >= min_lean) & (right <= -min_lean)) | ((left <= -min_lean) & (right >= min_lean))
    return strongest_cuts(np.where(flip, np.abs(left - right), 0.0), bounds, max_cuts)


def strongest_cuts(strength: ArrayLike, bounds: ArrayLike, max_cuts: int = 2) -> list[float]:
    """The boundaries with positive strength, strongest first, at least a window apart (sorted in time)."""
    strength = np.asarray(strength, dtype=np.float64)
    bounds = np.asarray(bounds, dtype=np.float64)
    cuts: list[float] = []
    for j in np.argsort(-strength, kind="stable"):
        if strength[j] <= 0 or len(cuts) == max_cuts:
            break
        if all(abs(bounds[j] - c) >= CHANGE_WINDOW_S - 1e-9 for c in cuts):
            cuts.append(float(bounds[j]))
    return sorted(cuts)


def equal_error_rate(target_scores: ArrayLike, impostor_scores: ArrayLike) -> tuple[float, float]:
    """(EER, threshold at the EER) of cosine scores: where the miss rate meets the false-accept rate."""
    tgt = np.sort(np.asarray(target_scores, dtype=np.float64).reshape(-1))
    imp = np.sort(np.asarray(impostor_scores, dtype=np.float64).reshape(-1))
    if tgt.size == 0 or imp.size == 0:
        raise ValueError("need target and impostor scores")
    candidates = np.unique(np.concatenate([tgt, imp]))
    miss = np.searchsorted(tgt, candidates, side="left") / tgt.size       # targets below the threshold
    fa = 1.0 - np.searchsorted(imp, candidates, side="left") / imp.size   # impostors at or above it
    i = int(np.argmin(np.abs(miss - fa)))
    return float((miss[i] + fa[i]) / 2.0), float(candidates[i])


def rates_at(target_scores: ArrayLike, impostor_scores: ArrayLike, threshold: float) -> tuple[float, float]:
    """(miss rate, false-accept rate) of the rule ``score >= threshold``."""
    tgt = np.asarray(target_scores, dtype=np.float64)
    imp = np.asarray(impostor_scores, dtype=np.float64)
    return float(np.mean(tgt < threshold)), float(np.mean(imp >= threshold))


def summarize(attributions: Sequence[Attribution]) -> dict[str, int]:
    """How many segments went to each speaker."""
    counts = {name: 0 for name in SPEAKERS}
    for a in attributions:
        counts[a.speaker] += 1
    return counts
