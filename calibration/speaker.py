"""Speaker calibration by enrolment, never by the monitored speech itself.

A patient's voice differs from the population's (pitch, timbre, loudness).
Re-centring each speaker on the mean of their own recent speech removes that,
but it also removes a mood that lasts: a patient who is sad for weeks would be
re-centred to neutral. So the only per-speaker statistic we use comes from an
explicit enrolment recording (calm reading or talk at intake): the speaker's
features are shifted so that their enrolment baseline lands on the population's
baseline (the mean of the training corpora's neutral/calm speech). Without an
enrolment, population statistics alone are used.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

NORMALIZATION_MODES = ("none", "population", "enrolment")
#: Emotions whose speech serves as a speaker's baseline in training corpora.
BASELINE_EMOTIONS = ("neutral", "calm")
#: What an enrolment recording at intake is: neutral speech (a calm reading or talk about everyday things).
INTAKE: dict[str, float] = {"neutral": 1.0}


def composition_of(labels: ArrayLike) -> dict[str, float]:
    """Shares of each emotion among a baseline's clips or segments."""
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    return {str(v): float(c) / float(counts.sum()) for v, c in zip(values, counts, strict=True)}


@dataclass
class SpeakerBaseline:
    """The feature mean of one speaker's enrolment speech, for one model.

    ``model_id`` ties the baseline to the backbone that produced the features:
    a baseline from another model's feature space must not be applied.
    """

    mean: np.ndarray
    n_segments: int
    seconds: float
    model_id: str
    source: str = ""
    created: float = field(default_factory=time.time)
    #: What kind of speech the baseline is, as shares of emotions: an intake reading is neutral speech
    #: (:data:`INTAKE`); a training speaker's baseline is their mix of neutral and calm clips. The shift
    #: maps it onto the population's mean of the same mix (like to like). None: a baseline from before
    #: this was recorded, mapped onto the population's neutral/calm mean as it was then.
    composition: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "mean": [float(x) for x in np.asarray(self.mean, dtype=np.float64)],
            "n_segments": int(self.n_segments),
            "seconds": float(self.seconds),
            "model_id": self.model_id,
            "source": self.source,
            "created": float(self.created),
        }
        if self.composition is not None:
            data["composition"] = {k: float(v) for k, v in self.composition.items()}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "SpeakerBaseline":
        return cls(
            mean=np.asarray(data["mean"], dtype=np.float64),
            n_segments=int(data["n_segments"]),
            seconds=float(data["seconds"]),
            model_id=str(data["model_id"]),
            source=str(data.get("source", "")),
            created=float(data.get("created", 0.0)),
            composition={str(k): float(v) for k, v in data["composition"].items()} if data.get("composition") else None,
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "SpeakerBaseline":
        return cls.from_json(json.loads(Path(path).read_text()))


class FeatureNormalizer:
    """Population z-scoring of backbone features, with an optional enrolment shift.

    mode "none": features pass unchanged; "population": (x - mean) / scale;
    "enrolment": like population, after shifting an enrolled speaker by
    ``reference - baseline.mean`` (no shift without a baseline).
    """

    def __init__(self, mode: str = "population"):
        if mode not in NORMALIZATION_MODES:
            raise ValueError(f"normalization mode must be one of {NORMALIZATION_MODES}, got {mode!r}")
        self.mode = mode
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None
        self.reference_: np.ndarray | None = None
        #: The population mean of each baseline emotion (neutral, calm): where a baseline of that kind belongs.
        self.references_: dict[str, np.ndarray] = {}

    # ---- fitting -----------------------------------------------------------------
    def fit(self, features: ArrayLike, labels: ArrayLike | None = None) -> "FeatureNormalizer":
        """Population statistics from (already speaker-shifted) training features.

        ``reference_`` is the mean of the baseline emotions' features (neutral
        and calm) when labels are given and present, else the overall mean.
        """
        x = np.asarray(features, dtype=np.float64)
        self.mean_ = x.mean(axis=0)
        scale = x.std(axis=0)
        self.scale_ = np.where(scale > 1e-8, scale, 1.0)
        self.reference_ = self.mean_.copy()
        self.references_ = {}
        if labels is not None:
            labels = np.asarray(labels)
            is_baseline = np.isin(labels, BASELINE_EMOTIONS)
            if is_baseline.any():
                self.reference_ = x[is_baseline].mean(axis=0)
            self.references_ = {e: x[labels == e].mean(axis=0) for e in BASELINE_EMOTIONS if (labels == e).any()}
        return self

    def target(self, composition: Mapping[str, float] | None) -> np.ndarray:
        """Where a baseline of this composition belongs: the population mean of the same mix of emotions."""
        if self.reference_ is None:
            raise RuntimeError("FeatureNormalizer is not fitted")
        if not composition or not set(composition) <= set(self.references_):
            return self.reference_
        total = sum(composition.values())
        mixed: np.ndarray = sum((w / total) * self.references_[e] for e, w in composition.items())  # type: ignore[assignment]
        return mixed

    def speaker_offset(self, baseline: SpeakerBaseline | np.ndarray | None) -> np.ndarray | None:
        """The shift that moves this speaker's baseline onto the population's mean of the same kind of speech."""
        if self.mode != "enrolment" or baseline is None:
            return None
        if isinstance(baseline, SpeakerBaseline):
            offset: np.ndarray = self.target(baseline.composition) - baseline.mean
            return offset
        legacy: np.ndarray = self.target(None) - np.asarray(baseline, dtype=np.float64)
        return legacy

    # ---- applying ----------------------------------------------------------------
    def apply(self, features: ArrayLike, baseline: SpeakerBaseline | np.ndarray | None = None) -> np.ndarray:
        """Normalize a [n, d] feature array (float32 out)."""
        x = np.asarray(features, dtype=np.float64)
        if self.mode == "none":
            return x.astype(np.float32)
        if self.mean_ is None or self.scale_ is None:
            raise RuntimeError("FeatureNormalizer is not fitted")
        offset = self.speaker_offset(baseline)
        if offset is not None:
            if offset.shape[-1] != x.shape[-1]:
                raise ValueError(f"speaker baseline has {offset.shape[-1]} features, the model has {x.shape[-1]}")
            x = x + offset
        normalized: np.ndarray = ((x - self.mean_) / self.scale_).astype(np.float32)
        return normalized

    # ---- persistence (JSON + arrays, no pickle) ------------------------------------
    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        arrays: dict[str, np.ndarray] = {}
        if self.mean_ is not None and self.scale_ is not None and self.reference_ is not None:
            arrays = {"mean": self.mean_, "scale": self.scale_, "reference": self.reference_}
            arrays.update({f"reference_{e}": v for e, v in self.references_.items()})
        return {"mode": self.mode, "baseline_emotions": list(BASELINE_EMOTIONS)}, arrays

    @classmethod
    def from_state(cls, params: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> "FeatureNormalizer":
        normalizer = cls(mode=params.get("mode", "population"))
        if arrays:
            normalizer.mean_ = np.asarray(arrays["mean"], dtype=np.float64)
            normalizer.scale_ = np.asarray(arrays["scale"], dtype=np.float64)
            normalizer.reference_ = np.asarray(arrays["reference"], dtype=np.float64)
            normalizer.references_ = {k[len("reference_"):]: np.asarray(v, dtype=np.float64)
                                      for k, v in arrays.items() if k.startswith("reference_")}
        elif normalizer.mode != "none":
            raise ValueError(f"normalization mode {normalizer.mode!r} needs mean/scale arrays")
        return normalizer


# ---- training speakers: baselines from their neutral/calm clips ------------------------------
# Training with ``normalization="enrolment"`` shifts each training speaker that has baseline speech
# (neutral or calm clips: RAVDESS, EMOVO, EmoDB, ...) so that their baseline lands on the population's,
# exactly as the runtime shifts an enrolled patient; speakers without such clips stay unshifted, as a
# patient without an enrolment does.


def enrolment_masks(labels: ArrayLike, speakers: ArrayLike,
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


def baselines_from_clips(features: ArrayLike, labels: ArrayLike, speakers: ArrayLike, model_id: str = "",
                         emotions: Sequence[str] = BASELINE_EMOTIONS, seconds: ArrayLike | None = None,
                         ) -> dict[str, SpeakerBaseline]:
    """One :class:`SpeakerBaseline` per speaker from the mean features of their neutral/calm clips."""
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    out = {}
    for spk, mask in enrolment_masks(labels, speakers, emotions).items():
        secs = float(np.sum(np.asarray(seconds)[mask])) if seconds is not None else 0.0
        out[spk] = SpeakerBaseline(mean=features[mask].mean(axis=0), n_segments=int(mask.sum()), seconds=secs,
                                   model_id=model_id, source="training corpus " + "/".join(emotions) + " clips",
                                   composition=composition_of(labels[mask]))
    return out


def _balanced_mean(features: np.ndarray, labels: np.ndarray, speakers: np.ndarray, who: object,
                   emotions: Sequence[str]) -> np.ndarray:
    """The mean over ``emotions`` of one speaker's per-emotion mean features."""
    means: np.ndarray = np.mean([features[(speakers == who) & (labels == e)].mean(axis=0) for e in emotions], axis=0)
    return means


def estimated_baselines(features: ArrayLike, labels: ArrayLike, speakers: ArrayLike,
                        known: Mapping[str, SpeakerBaseline], emotions: Sequence[str] = BASELINE_EMOTIONS,
                        ) -> dict[str, SpeakerBaseline]:
    """Baselines for *training* speakers without neutral/calm clips (JL-Corpus), estimated from their other clips.

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
        delta = np.mean([_balanced_mean(features, labels, speakers, t, common) - known[t].mean for t in refs], axis=0)
        mixes = [known[t].composition for t in refs]
        composition = None if any(m is None for m in mixes) else {
            e: float(np.mean([(m or {}).get(e, 0.0) for m in mixes])) for e in set().union(*[m or {} for m in mixes])}
        out[str(spk)] = SpeakerBaseline(mean=_balanced_mean(features, labels, speakers, spk, common) - delta,
                                        n_segments=int((speakers == spk).sum()), seconds=0.0, model_id="",
                                        source="estimated from " + "/".join(common) + " clips",
                                        composition=composition)
    return out


def fit_normalizer(features: ArrayLike, labels: ArrayLike, speakers: ArrayLike, mode: str,
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
    population = FeatureNormalizer("enrolment").fit(features, labels)  # where each kind of baseline belongs
    baselines = baselines_from_clips(features, labels, speakers)
    if estimate_missing:
        baselines.update(estimated_baselines(features, labels, speakers, baselines))
    shifted = features.copy()
    speakers = np.asarray(speakers)
    for spk, base in baselines.items():
        shifted[speakers == spk] += population.target(base.composition) - base.mean
    normalizer.fit(shifted, labels)
    # apply() adds target(composition) - baseline; the shifted data's references equal the unshifted ones
    # up to how far the speakers' own mixes of neutral and calm differ
    return normalizer, normalize_speakers(normalizer, features, speakers, baselines)


def normalize_speakers(normalizer: FeatureNormalizer, features: ArrayLike, speakers: ArrayLike,
                       baselines: Mapping[str, SpeakerBaseline | np.ndarray] | None = None) -> np.ndarray:
    """Apply the runtime normalisation to clips of several speakers, each with their own (optional) baseline."""
    speakers = np.asarray(speakers)
    out = np.empty(np.asarray(features).shape, dtype=np.float32)
    for spk in np.unique(speakers):
        m = speakers == spk
        out[m] = normalizer.apply(np.asarray(features)[m], (baselines or {}).get(str(spk)))
    return out
