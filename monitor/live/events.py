"""The values that travel along the data path, and the interface of its outputs.

segments (``monitor.audio.frames``) -> worker -> ``Embedded``
-> projector -> ``Point`` -> heat map and every ``PointSink`` (JSONL, dashboard
server, store). Keeping them in one small module lets every stage agree on
them without importing each other.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from calibration.attribution import Attribution
    from monitor.live.heatmap import RollingHeatmap

from monitor.audio.frames import Segment


@dataclass(frozen=True)
class Embedded:
    """The worker's output for one segment: emotion embedding, class probabilities and, when voiceprints are
    enrolled, whose voice it is (``calibration.attribution.Attribution``)."""

    segment: Segment
    embedding: np.ndarray
    probabilities: np.ndarray
    attribution: Attribution | None = None


@dataclass(frozen=True)
class Point:
    """One segment placed on the circumplex: what the dashboard, store and JSONL get."""

    index: int
    t_start: float
    t_end: float
    valence: float
    arousal: float
    confidence: float  # the top class's probability
    probabilities: dict[str, float]  # every class, in the model's label order
    latency_ms: float
    wall_time: float = field(default_factory=time.time)
    #: Whose voice: "patient", "clinician" or "unknown"; None when no voiceprint is enrolled (not attributed).
    speaker: str | None = None
    #: The cosine with the named speaker's voiceprint (for unknown: the best one); None when not attributed.
    speaker_score: float | None = None
    #: Whether the point counts as the patient's (heat map, summaries, store): False for another voice's point
    #: when only the patient is counted (``--count patient``, or ``auto`` with both voices enrolled).
    counted: bool = True

    @property
    def duration(self) -> float:
        return self.t_end - self.t_start

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Mark:
    """A therapist's annotation at a session time."""

    t: float
    text: str
    wall_time: float = field(default_factory=time.time)
    source: str = "dashboard"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SessionInfo:
    """What outputs need to know about the session when it starts."""

    session_id: str
    started_at: float
    model_id: str
    model_version: str
    device: str
    labels: tuple[str, ...]
    source: str
    patient_id: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["labels"] = list(self.labels)
        return data


@dataclass(frozen=True)
class Status:
    """A periodic health report of the running pipeline."""

    t: float
    speech_active: bool
    paused: bool
    frame_queue: int
    segment_queue: int
    result_queue: int
    dropped_frames: int
    failed_segments: int
    segments: int
    points: int
    device: str
    #: Segments the speech gate skipped as not speech (tones, hum, music, noise).
    nonspeech_segments: int = 0
    #: Seconds of placed speech per attributed speaker (patient, clinician, unknown); empty when not attributing.
    speaker_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PointSink(Protocol):
    """Where points go: the JSONL writer, the dashboard server, the store.

    The pipeline calls these from its dispatch thread; an implementation that
    does slow work (network, disk) must hand it to its own thread through a
    bounded queue and return at once. ``heatmap`` is the pipeline's live heat
    map; it is safe to ``snapshot()`` from any thread.
    """

    def start(self, session: SessionInfo, heatmap: "RollingHeatmap") -> None: ...

    def point(self, point: Point) -> None: ...

    def mark(self, mark: Mark) -> None: ...

    def status(self, status: Status) -> None: ...

    def close(self) -> None: ...
