"""Emotion vocabulary and (valence, arousal) anchor tables.

Every corpus adapter maps its labels onto one canonical vocabulary, and every
anchor table is keyed by that vocabulary, so a label means the same point of
Russell's circumplex whichever corpus it came from.

Values follow the pleasure (valence) and arousal columns of Russell &
Mehrabian (1977), "Evidence for a three-factor theory of emotions", Journal of
Research in Personality 11, 273-294, as used by the research code this project
starts from. Two rows differ between the research code's IEMOCAP table and
its table for the other corpora (happy, angry); both are kept.

``calm`` has no row in the research code. We anchor it at Russell & Mehrabian's
"relaxed" row (pleasure +0.68, arousal -0.46): calm is the low-arousal,
pleasant state that RAVDESS's actors were asked to portray, and taking the
value from the same table keeps it on the same scale as every other anchor.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

#: The canonical emotion names every adapter maps to.
CANONICAL_EMOTIONS: tuple[str, ...] = (
    "neutral",
    "calm",
    "happy",
    "sad",
    "angry",
    "fearful",
    "disgust",
    "surprised",
    "bored",
    "excited",
    "frustrated",
    "contempt",
)

#: Common spellings and corpus codes -> canonical name.
ALIASES: dict[str, str] = {
    "neu": "neutral",
    "neutral": "neutral",
    "calm": "calm",
    "relaxed": "calm",
    "hap": "happy",
    "happy": "happy",
    "happiness": "happy",
    "joy": "happy",
    "gio": "happy",
    "sad": "sad",
    "sadness": "sad",
    "tri": "sad",
    "ang": "angry",
    "anger": "angry",
    "angry": "angry",
    "rab": "angry",
    "fea": "fearful",
    "fear": "fearful",
    "fearful": "fearful",
    "pau": "fearful",
    "dis": "disgust",
    "disgust": "disgust",
    "disgusted": "disgust",
    "sur": "surprised",
    "surprise": "surprised",
    "surprised": "surprised",
    "sor": "surprised",
    "bor": "bored",
    "boredom": "bored",
    "bored": "bored",
    "exc": "excited",
    "excited": "excited",
    "excitement": "excited",
    "fru": "frustrated",
    "frustration": "frustrated",
    "frustrated": "frustrated",
    "con": "contempt",
    "contempt": "contempt",
}


def canonical_emotion(name: str) -> str:
    """Map a corpus label or common spelling to the canonical vocabulary.

    Raises ``KeyError`` with the known names when the label is unknown, so a
    corpus with a new label fails loudly instead of being silently dropped.
    """
    key = name.strip().lower()
    if key in ALIASES:
        return ALIASES[key]
    raise KeyError(f"unknown emotion label {name!r}; known: {sorted(set(ALIASES))}")


# Russell & Mehrabian (1977) pleasure/arousal values as used by the research code.
_RM_COMMON: dict[str, tuple[float, float]] = {
    "neutral": (0.0, 0.0),
    "calm": (0.68, -0.46),
    "happy": (0.76, 0.48),
    "sad": (-0.63, -0.27),
    "angry": (-0.43, 0.67),
    "fearful": (-0.64, 0.60),
    "disgust": (-0.60, 0.35),
    "surprised": (0.0, 0.60),
    "bored": (-0.65, -0.62),
    "excited": (0.62, 0.75),
    "frustrated": (-0.64, 0.52),
    "contempt": (-0.80, 0.20),
}
_RM_IEMOCAP = {**_RM_COMMON, "happy": (0.81, 0.51), "angry": (-0.51, 0.59)}

_SOURCE_RM = (
    "Russell & Mehrabian (1977), J. Research in Personality 11:273-294, "
    "pleasure and arousal columns; calm = their 'relaxed' row"
)


@dataclass(frozen=True)
class AnchorSet:
    """A named label set: the labels a corpus uses and where each sits.

    ``anchors`` maps canonical emotion -> (valence, arousal) in [-1, 1].
    """

    name: str
    anchors: Mapping[str, tuple[float, float]]
    source: str = _SOURCE_RM
    description: str = ""
    labels: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.labels:
            object.__setattr__(self, "labels", tuple(self.anchors))
        for label in self.labels:
            if label not in self.anchors:
                raise ValueError(f"anchor set {self.name!r} has no anchor for label {label!r}")
            v, a = self.anchors[label]
            if not (-1.0 <= v <= 1.0 and -1.0 <= a <= 1.0) or not (math.isfinite(v) and math.isfinite(a)):
                raise ValueError(f"anchor for {label!r} in {self.name!r} must lie in [-1, 1]^2, got {(v, a)}")

    def anchor(self, label: str) -> tuple[float, float]:
        valence, arousal = self.anchors[canonical_emotion(label)]
        return (valence, arousal)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "labels": list(self.labels),
            "anchors": {k: [float(v), float(a)] for k, (v, a) in self.anchors.items() if k in self.labels},
            "source": self.source,
            "description": self.description,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "AnchorSet":
        anchors = {canonical_emotion(k): (float(v[0]), float(v[1])) for k, v in data["anchors"].items()}
        labels = tuple(canonical_emotion(x) for x in data.get("labels", anchors))
        return cls(
            name=str(data.get("name", "custom")),
            anchors=anchors,
            source=str(data.get("source", "user supplied")),
            description=str(data.get("description", "")),
            labels=labels,
        )


def _subset(name: str, table: Mapping[str, tuple[float, float]], labels: tuple[str, ...],
            description: str) -> AnchorSet:
    return AnchorSet(name=name, anchors={k: table[k] for k in labels}, labels=labels, description=description)


ANCHOR_SETS: dict[str, AnchorSet] = {
    s.name: s
    for s in (
        _subset("iemocap4", _RM_IEMOCAP, ("neutral", "happy", "sad", "angry"),
                "IEMOCAP, 4 classes (excited usually merged into happy)"),
        _subset("iemocap5", _RM_IEMOCAP, ("neutral", "happy", "sad", "angry", "frustrated"),
                "IEMOCAP, 5 classes"),
        _subset("iemocap9", _RM_IEMOCAP,
                ("neutral", "happy", "sad", "angry", "frustrated", "excited", "fearful", "surprised", "disgust"),
                "IEMOCAP, 9 classes"),
        _subset("mead", _RM_COMMON, ("neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised", "contempt"),
                "MEAD, 8 classes"),
        _subset("emodb", _RM_COMMON, ("neutral", "happy", "sad", "angry", "fearful", "disgust", "bored"),
                "EmoDB (Berlin), 7 classes"),
        _subset("ravdess", _RM_COMMON,
                ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"),
                "RAVDESS speech, 8 classes"),
        _subset("cremad", _RM_COMMON, ("neutral", "happy", "sad", "angry", "fearful", "disgust"),
                "CREMA-D, 6 classes"),
        _subset("emovo", _RM_COMMON, ("neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised"),
                "EMOVO (Italian), 7 classes"),
        _subset("jl", _RM_COMMON, ("happy", "sad", "angry", "excited"),
                "JL-Corpus primary emotions present here"),
        AnchorSet(name="all", anchors=dict(_RM_COMMON), description="every canonical emotion"),
    )
}


def get_anchor_set(name_or_path: str | Path) -> AnchorSet:
    """A built-in anchor set by name, or a user's JSON file (see ``AnchorSet.to_json``)."""
    key = str(name_or_path)
    if key in ANCHOR_SETS:
        return ANCHOR_SETS[key]
    path = Path(key)
    if path.suffix.lower() == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"anchor file not found: {path}")
        return AnchorSet.from_json(json.loads(path.read_text()))
    raise KeyError(f"unknown anchor set {key!r}; built-in sets: {sorted(ANCHOR_SETS)}, or pass a .json file")


def anchors_for(labels: list[str] | tuple[str, ...], table: str = "all") -> dict[str, tuple[float, float]]:
    """Anchors for exactly these canonical labels, taken from ``table``."""
    anchor_set = get_anchor_set(table)
    return {label: anchor_set.anchor(label) for label in labels}
