"""The whole data path in one place.

    source ─frames─▶ segmenter ─segments─▶ worker ─embeddings─▶ projector ─points─┬─▶ heat map
    (mic / file)     (VAD thread)          (model thread)       (this thread)     └─▶ sinks: JSONL, dashboard, store

Threads talk only through bounded queues. When the model falls behind, the
segmenter blocks on the worker's queue; a replayed file then slows down, and a
microphone drops (and counts) frames in its own bounded queue instead of
growing memory. ``stop()`` (Ctrl-C) ends the source; every stage then drains
what it holds and the sinks are flushed and closed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from monitor.model.audio_format import SAMPLE_RATE
from monitor.live.events import Embedded, Mark, PointSink, SessionInfo, Status
from monitor.audio.frames import Segment
from monitor.live.heatmap import HeatmapConfig, RollingHeatmap
from monitor.live.projection import Projector
from monitor.audio.segmenter import VadConfig, VadSegmenter
from monitor.audio.sources import AudioSource
from monitor.live.worker import EmbeddingModel, EmbeddingWorker, WorkerConfig

if TYPE_CHECKING:  # pragma: no cover
    from calibration.speaker import SpeakerBaseline

log = logging.getLogger(__name__)


class OutputStartError(RuntimeError):
    """An output (dashboard server, store, file) could not start; nothing was recorded."""


@dataclass
class MonitorConfig:
    """Everything that shapes a session, gathered so it can be stored with it."""

    vad: VadConfig = field(default_factory=VadConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    heatmap: HeatmapConfig = field(default_factory=HeatmapConfig)
    status_interval_s: float = 1.0
    latency_history: int = 100_000

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SessionSummary:
    """What a session did; printed at the end and returned to callers."""

    session_id: str
    audio_seconds: float
    speech_seconds: float
    segments: int
    points: int
    dropped_frames: int
    failed_segments: int
    short_segments_discarded: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    wall_seconds: float
    repaired_samples: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        def ms(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.0f} ms"

        lines = [
            f"session {self.session_id}: {self.audio_seconds:.1f} s of audio in {self.wall_seconds:.1f} s",
            f"  speech {self.speech_seconds:.1f} s in {self.segments} segments -> {self.points} points",
            f"  latency p50 {ms(self.latency_p50_ms)}, p95 {ms(self.latency_p95_ms)}",
            f"  dropped frames {self.dropped_frames}, failed segments {self.failed_segments}, "
            f"short segments skipped {self.short_segments_discarded}",
        ]
        if self.repaired_samples:
            lines.append(f"  repaired samples (NaN/inf or clipped) {self.repaired_samples}")
        if self.error:
            lines.append(f"  ended early: {self.error}")
        return "\n".join(lines)


class MonitorPipeline:
    """Wires a source, a model and outputs into a running session."""

    def __init__(self, source: AudioSource, model: EmbeddingModel, projector: Projector,
                 sinks: Sequence[PointSink] = (), config: MonitorConfig | None = None,
                 session: SessionInfo | None = None, baseline: SpeakerBaseline | None = None):
        self.config = config or MonitorConfig()
        self.source = source
        self.segmenter = VadSegmenter(self.config.vad)
        self.worker = EmbeddingWorker(model, self.config.worker, baseline=baseline)
        self.projector = projector
        self.heatmap = RollingHeatmap(self.config.heatmap)
        self.sinks = list(sinks)
        self._audio_sinks = [s for s in self.sinks if callable(getattr(s, "segment_audio", None))]
        # Sinks are called from the dispatch thread and, for marks, from the dashboard's: one lock serialises
        # them, and once the session's outputs are closing no mark is accepted (it would be lost).
        self._sink_lock = threading.Lock()
        self._sinks_closed = False
        self.session = session or SessionInfo(
            session_id=new_session_id(), started_at=time.time(), model_id="unknown", model_version="",
            device=self.config.worker.device, labels=tuple(projector.labels), source=source.description,
        )
        self._stopping = threading.Event()
        self._paused = threading.Event()
        self._latencies: deque[float] = deque(maxlen=self.config.latency_history)
        self._segments = 0
        self._points = 0
        self._audio_seconds = 0.0
        self.error: str | None = None

    def add_sink(self, sink: PointSink, first: bool = False) -> None:
        """Add an output before ``run()``, for one built after the pipeline (the dashboard takes it as its controls).

        ``first``: started before the others, so that if it cannot start (a busy port) nothing was recorded yet.
        """
        if first:
            self.sinks.insert(0, sink)
        else:
            self.sinks.append(sink)
        if callable(getattr(sink, "segment_audio", None)):
            self._audio_sinks.append(sink)

    # ---- control (safe from any thread: the dashboard calls these) -----------------------
    def stop(self) -> None:
        """End the session gracefully: stop the source; everything queued is still processed."""
        self._stopping.set()
        self.source.stop()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    @property
    def session_time(self) -> float:
        return self._audio_seconds

    def add_mark(self, text: str, t: float | None = None, source: str = "dashboard") -> Mark:
        """Record a mark in every output; RuntimeError once the session's outputs are closing."""
        mark = Mark(t=self.session_time if t is None else float(t), text=str(text), source=source)
        self._fan_out("mark", mark)
        return mark

    # ---- stage 1+2: source -> segmenter -> worker queue (its own thread) --------------
    def _segment_loop(self) -> None:
        try:
            for frame in self.source.frames():
                self._audio_seconds = frame.t_end
                if self._paused.is_set():
                    self.segmenter.flush()  # drop the open segment: paused speech is not analysed
                    continue
                for segment in self.segmenter.push(frame):
                    self._submit(segment)
                if self._stopping.is_set():
                    break
        except Exception as exc:  # noqa: BLE001 - keep what was captured, report the cause
            self.error = str(exc)
            log.error("audio input ended: %s", exc)
        finally:
            if not self._paused.is_set():
                for segment in self.segmenter.flush():
                    self._submit(segment)
            self.worker.close()

    def _submit(self, segment: Segment) -> None:
        self._segments += 1
        self.worker.submit(segment)

    # ---- stage 4+5: projector -> heat map -> sinks (the calling thread) -----------------
    def _dispatch(self, item: Embedded) -> None:
        point = self.projector(item)
        self.heatmap.add_point(point)
        self._latencies.append(point.latency_ms)
        self._points += 1
        self._fan_out("point", point)
        self._fan_out("segment_audio", point, item.segment.audio, sinks=self._audio_sinks)  # each decides to keep it

    def _fan_out(self, method: str, *args: object, sinks: Sequence[PointSink] | None = None) -> None:
        with self._sink_lock:
            if self._sinks_closed:
                if method == "mark":
                    raise RuntimeError("the session has ended")
                return
            for sink in self.sinks if sinks is None else sinks:
                try:
                    getattr(sink, method)(*args)
                except Exception as exc:  # noqa: BLE001 - one broken output must not stop the others
                    log.warning("output %s failed on %s: %s", type(sink).__name__, method, exc)

    def status(self) -> Status:
        return Status(
            t=self.session_time, speech_active=self.segmenter.speech_active, paused=self.paused,
            frame_queue=self.source.queue_depth, segment_queue=self.worker.segments.qsize(),
            result_queue=self.worker.results.qsize(), dropped_frames=self.source.dropped_frames,
            failed_segments=self.worker.failed_segments, segments=self._segments, points=self._points,
            device=str(self.session.device),
        )

    def _start_sinks(self) -> None:
        """Start every output, or none: if one cannot start (a busy port), close those already started."""
        started: list[PointSink] = []
        for sink in self.sinks:
            try:
                sink.start(self.session, self.heatmap)
            except Exception as exc:
                for done in reversed(started):
                    try:
                        done.close()
                    except Exception:  # noqa: BLE001
                        log.debug("closing %s after a failed start", type(done).__name__, exc_info=True)
                raise OutputStartError(f"{type(sink).__name__} could not start: {exc}") from exc
            started.append(sink)

    def warm_up(self) -> None:
        """One silent second through model and projector, so the first real segment is not slowed by lazy set-up."""
        item = self.worker.process([Segment(-1, 0.0, 1.0, np.zeros(SAMPLE_RATE, dtype=np.float32), time.monotonic())])
        if item:
            self.projector(item[0])
        self.worker.failed_segments = 0
        self.worker.batches = 0

    def run(self) -> SessionSummary:
        """Run until the source ends or ``stop()``; Ctrl-C here stops gracefully."""
        self.warm_up()
        started = time.monotonic()
        self._start_sinks()
        segmenter_thread = threading.Thread(target=self._segment_loop, name="segmenter", daemon=True)
        self.worker.start()
        segmenter_thread.start()
        try:
            self._dispatch_loop()
        finally:
            segmenter_thread.join(timeout=5)
            self._close_sinks()
        return self.summary(time.monotonic() - started)

    def _dispatch_loop(self) -> None:
        """Place every result the worker hands on, with a status every ``status_interval_s``, until it is done."""
        next_status = time.monotonic()
        while True:
            try:
                item = self.worker.results.get(timeout=0.1)
            except queue.Empty:
                pass
            except KeyboardInterrupt:
                if self.stopping:  # a second Ctrl-C aborts the drain (outputs are still closed)
                    raise
                self.stop()
                continue
            else:
                if item is None:
                    break
                self._dispatch_safely(item)
            if time.monotonic() >= next_status:
                self._fan_out("status", self.status())
                next_status = time.monotonic() + self.config.status_interval_s

    def _dispatch_safely(self, item: Embedded) -> None:
        """Dispatch one result; a failure costs that segment only, a Ctrl-C stops the session gracefully."""
        try:
            self._dispatch(item)
        except KeyboardInterrupt:
            if self.stopping:
                raise
            self.stop()
        except Exception as exc:  # noqa: BLE001
            self.worker.failed_segments += 1
            log.warning("could not place segment %s: %s", item.segment.index, exc)

    def _close_sinks(self) -> None:
        """A last status, then close every output; nothing is accepted afterwards."""
        self._fan_out("status", self.status())
        with self._sink_lock:
            self._sinks_closed = True
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001
                log.warning("closing output %s failed: %s", type(sink).__name__, exc)

    def summary(self, wall_seconds: float) -> SessionSummary:
        lat = np.asarray(self._latencies, dtype=np.float64)
        stats = self.source.stats
        return SessionSummary(
            session_id=self.session.session_id,
            audio_seconds=round(self._audio_seconds, 3),
            speech_seconds=round(self.segmenter.speech_seconds, 3),
            segments=self._segments,
            points=self._points,
            dropped_frames=self.source.dropped_frames,
            failed_segments=self.worker.failed_segments,
            short_segments_discarded=self.segmenter.discarded_short,
            latency_p50_ms=float(np.percentile(lat, 50)) if lat.size else None,
            latency_p95_ms=float(np.percentile(lat, 95)) if lat.size else None,
            wall_seconds=round(wall_seconds, 3),
            repaired_samples=stats.nonfinite_samples + stats.clipped_samples,
            error=self.error,
        )


def new_session_id() -> str:
    """Sortable and unique: UTC start time plus a random suffix."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
