"""The whole data path in one place.

    source ─frames─▶ segmenter ─segments─▶ worker ─embeddings─▶ projector ─points─┬─▶ heat map
    (mic / file)     (VAD thread)          (model thread)       (this thread)     └─▶ sinks: JSONL, dashboard, store

Threads talk only through bounded queues. When the model falls behind, the
segmenter blocks on the worker's queue; a replayed file then slows down, and a
microphone drops (and counts) frames in its own bounded queue instead of
growing memory. ``stop()`` (Ctrl-C) ends the source; every stage then drains
what it holds and the sinks are flushed and closed. A second Ctrl-C aborts:
queued speech is dropped, and the stages' threads are stopped and joined in
order (segmenter, then the model's worker, then the outputs) so that none is
still inside native code when the process exits.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field, replace
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
from monitor.live.placement import calibration_status

if TYPE_CHECKING:  # pragma: no cover
    from calibration.speaker import SpeakerBaseline
    from monitor.live.speakers import SpeakerAttributor

log = logging.getLogger(__name__)


class ModelWarmUpError(RuntimeError):
    """The model failed on a second of silence before the session started (a broken or mismatched bundle)."""


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
    #: After stop(), how long an input that delivers nothing (a silent FIFO or pipe) is waited for.
    input_stop_grace_s: float = 5.0
    #: On abort, how long the segmenter and the model's worker may take to finish what they are doing.
    abort_join_s: float = 30.0

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
    #: Segments the VAD cut that the speech gate found not to be speech (tones, hum, music, noise): no points.
    nonspeech_segments: int = 0
    nonspeech_seconds: float = 0.0
    #: Points and marks the store could not keep (its queue was full, its writes failed, the session was deleted).
    points_not_stored: int = 0
    marks_not_stored: int = 0
    #: Per output (e.g. "jsonl"): points and marks it failed to take (an exception), besides the store's own count.
    output_failures: dict[str, int] = field(default_factory=dict)
    #: Input channels that were phase-inverted and turned round before mixing to mono (1-based).
    inverted_channels: list[int] = field(default_factory=list)
    #: Whose points counted: "patient" (only the enrolled patient's voice) or "all" (every voice: no patient
    #: voiceprint, or --count all).
    counting: str = "all"
    #: Seconds of placed speech per attributed voice (patient, clinician, unknown); empty when not attributing.
    speaker_seconds: dict[str, float] = field(default_factory=dict)
    #: Points that went into the heat map, summaries and store (the others are another voice's).
    points_counted: int = 0
    #: Whether placement was calibrated to the speaker (``monitor.live.placement.calibration_status``).
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def outputs_complete(self) -> bool:
        """Every point and mark reached every output (the store included)."""
        return not (self.points_not_stored or self.marks_not_stored or any(self.output_failures.values()))

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
        if self.nonspeech_segments:
            lines.append(f"  non-speech segments skipped {self.nonspeech_segments} ({self.nonspeech_seconds:.1f} s: "
                         "tones, hum, music or noise; see --speech-gate)")
        if self.repaired_samples:
            lines.append(f"  repaired samples (NaN/inf or clipped) {self.repaired_samples}")
        if self.speaker_seconds:
            voices = ", ".join(f"{k} {v:.1f} s" for k, v in self.speaker_seconds.items())
            counted = ("only the patient's voice counted" if self.counting == "patient"
                       else "every voice counted (--count all)")
            lines.append(f"  voices: {voices}; {counted}: {self.points_counted} of {self.points} points")
        else:
            lines.append("  all voices counted (no patient voiceprint: enrol with --patient ID --enroll FILE)")
        if self.calibration:
            lines.append(f"  speaker calibration: {self.calibration['text']}")
        if self.inverted_channels:
            lines.append(f"  phase-inverted input channel(s) {', '.join(map(str, self.inverted_channels))} turned "
                         "round before mixing to mono")
        if self.points_not_stored or self.marks_not_stored:
            lines.append(f"  NOT STORED: {self.points_not_stored} of {self.points} points and {self.marks_not_stored} "
                         "marks could not be written to the store (see the log)")
        for name, n in self.output_failures.items():
            if n:
                lines.append(f"  NOT WRITTEN: {n} points/marks failed in the {name} output (see the log)")
        if self.error:
            lines.append(f"  ended early: {self.error}")
        return "\n".join(lines)


class MonitorPipeline:
    """Wires a source, a model and outputs into a running session."""

    def __init__(self, source: AudioSource, model: EmbeddingModel, projector: Projector,
                 sinks: Sequence[PointSink] = (), config: MonitorConfig | None = None,
                 session: SessionInfo | None = None, baseline: SpeakerBaseline | None = None,
                 speakers: SpeakerAttributor | None = None):
        self.config = config or MonitorConfig()
        self.source = source
        # with both voices enrolled, a segment holding a turn of each is cut where the voice changes
        self.segmenter = VadSegmenter(self.config.vad, speakers.cut_points if speakers and speakers.cuts_turns
                                      else None)
        self.speakers = speakers
        self.worker = EmbeddingWorker(model, self.config.worker, baseline=baseline, speakers=speakers)
        self._speaker_seconds: dict[str, float] = (
            {"patient": 0.0, "clinician": 0.0, "unknown": 0.0} if speakers is not None else {})
        self._points_counted = 0
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
        self._aborting = threading.Event()
        self._stop_requested_at: float | None = None
        self._last_input = time.monotonic()
        self._in_submit = False
        self._input_abandoned = False
        self._segmenter_thread: threading.Thread | None = None
        self._output_failures: dict[str, int] = {}
        self._marks: list[Mark] = []  # the session's marks, so the dashboard can edit or delete one
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
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
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
        """Record a mark in every output; RuntimeError once the session's outputs are closing.

        ``t`` (default: now) must be a session time the session has reached: ValueError otherwise.
        """
        if t is not None and not (math.isfinite(float(t)) and 0.0 <= float(t) <= self.session_time + 1.0):
            raise ValueError(f"a mark's time must lie within the session (0 to {self.session_time:.1f} s), got {t}")
        mark = Mark(t=self.session_time if t is None else float(t), text=str(text), source=source)
        self._fan_out("mark", mark)
        with self._sink_lock:
            self._marks.append(mark)
        return mark

    # ---- stage 1+2: source -> segmenter -> worker queue (its own thread) --------------
    def _segment_loop(self) -> None:
        try:
            for frame in self.source.frames():
                self._last_input = time.monotonic()
                if self._aborting.is_set():
                    return
                self._audio_seconds = frame.t_end
                if self._paused.is_set():
                    self.segmenter.flush()  # drop the open segment: paused speech is not analysed
                    continue
                for segment in self.segmenter.push(frame):
                    self._submit(segment)
                if self._stopping.is_set():
                    break
        except Exception as exc:  # noqa: BLE001 - keep what was captured, report the cause
            if not self._aborting.is_set():
                self.error = str(exc)
                log.error("audio input ended: %s", exc)
        finally:
            if not self._aborting.is_set():  # an abort has already stopped the worker
                if not self._paused.is_set():
                    for segment in self.segmenter.flush():
                        self._submit(segment)
                if not self._input_abandoned:
                    self._in_submit = True  # waits while the model's queue is full: busy, not stuck
                    try:
                        self.worker.close()
                    finally:
                        self._in_submit = False

    def _submit(self, segment: Segment) -> None:
        """Queue a segment for the model, waiting while its queue is full (back-pressure), but not past an abort."""
        self._segments += 1
        self._in_submit = True
        try:
            self.worker.submit_until(segment, self._aborting)
        finally:
            self._in_submit = False

    # ---- stage 4+5: projector -> heat map -> sinks (the calling thread) -----------------
    def _dispatch(self, item: Embedded) -> None:
        point = self.projector(item)
        if self.speakers is not None:  # another voice's point is labelled and passed on, but not the patient's
            point = replace(point, counted=self.speakers.counts(point.speaker))
            speaker = point.speaker or "unknown"
            self._speaker_seconds[speaker] = self._speaker_seconds.get(speaker, 0.0) + point.duration
        if point.counted:
            self.heatmap.add_point(point)
            self._points_counted += 1
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
                    if method in ("point", "mark"):
                        name = output_name(sink)
                        self._output_failures[name] = self._output_failures.get(name, 0) + 1

    def edit_mark(self, t: float, wall_time: float, text: str | None) -> Mark:
        """Change the text of the mark made at ``wall_time`` for session time ``t``, or delete it (``text=None``),
        in every output that keeps marks (the store, the dashboard). Returns the mark as it was; KeyError when
        there is no such mark, RuntimeError once the outputs are closing."""
        with self._sink_lock:
            if self._sinks_closed:
                raise RuntimeError("the session has ended")
            old = next((m for m in self._marks if abs(m.t - t) < 6e-4 and abs(m.wall_time - wall_time) < 6e-4), None)
            if old is None:
                raise KeyError(f"no mark at {t:.3f} s made at {wall_time:.3f}")
            new = None if text is None else replace(old, text=str(text))
            if new is None:
                self._marks.remove(old)
            else:
                self._marks[self._marks.index(old)] = new
        self._fan_out("edit_mark", old, new, sinks=[s for s in self.sinks if callable(getattr(s, "edit_mark", None))])
        return old

    def status(self) -> Status:
        return Status(
            t=self.session_time, speech_active=self.segmenter.speech_active, paused=self.paused,
            frame_queue=self.source.queue_depth, segment_queue=self.worker.segments.qsize(),
            result_queue=self.worker.results.qsize(), dropped_frames=self.source.dropped_frames,
            failed_segments=self.worker.failed_segments, segments=self._segments, points=self._points,
            device=str(self.session.device), nonspeech_segments=self.segmenter.discarded_nonspeech,
            speaker_seconds={k: round(v, 3) for k, v in self._speaker_seconds.items()},
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
        if not item:
            # a model that cannot embed one second of silence will fail every segment: stop before the session
            raise ModelWarmUpError(f"the model failed its warm-up, so no segment could be analysed: "
                                   f"{self.worker.last_error}")
        attribution = item[0].attribution
        if attribution is not None and attribution.reason == "error":
            # a speaker encoder that fails on silence fails on speech too: every point would be "unknown"
            raise ModelWarmUpError("the speaker encoder failed its warm-up, so no segment could be attributed "
                                   "(see the log)")
        self.projector(item[0])
        self.worker.failed_segments = 0
        self.worker.batches = 0

    def run(self) -> SessionSummary:
        """Run until the source ends or ``stop()``; Ctrl-C here stops gracefully."""
        self.warm_up()
        started = time.monotonic()
        self._start_sinks()
        segmenter_thread = self._segmenter_thread = threading.Thread(target=self._segment_loop, name="segmenter",
                                                                     daemon=True)
        self.worker.start()
        segmenter_thread.start()
        try:
            self._dispatch_loop()
        except BaseException:  # the second Ctrl-C (or a bug): stop the stages before the outputs close
            self._abort()
            raise
        finally:
            if not self._input_abandoned:
                segmenter_thread.join(timeout=5)
            self._close_sinks()
        return self.summary(time.monotonic() - started)

    def _abort(self) -> None:
        """Stop and join the stages in order: the source and segmenter, then the model's worker.

        Queued speech is dropped. Joining matters: a thread still inside native code (the model, openSMILE,
        libsndfile) when the interpreter shuts down makes the process abort instead of exiting.
        """
        self._aborting.set()
        self._stopping.set()
        self.source.stop()
        self.worker.abort()
        deadline = time.monotonic() + self.config.abort_join_s
        for thread in (self._segmenter_thread, self.worker):
            if thread is not None and thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        busy = self.busy_threads()
        if busy:
            log.warning("after the abort, still running: %s", ", ".join(busy))

    def busy_threads(self) -> list[str]:
        """The pipeline's own threads that are still running (after ``run()``: none, unless an input hangs)."""
        threads = [self._segmenter_thread, self.worker]
        return [t.name for t in threads if t is not None and t.is_alive()]

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
            if self.stopping:
                self._abandon_stuck_input()

    def _abandon_stuck_input(self) -> None:
        """After stop(): an input that has delivered nothing for ``input_stop_grace_s`` (a FIFO or pipe whose writer
        is silent) blocks its thread in a read that cannot be interrupted; finish the session without it."""
        thread = self._segmenter_thread
        if self._input_abandoned or thread is None or not thread.is_alive() or self._in_submit:
            return
        since = max(self._last_input, self._stop_requested_at or 0.0)
        if time.monotonic() - since < self.config.input_stop_grace_s:
            return
        self._input_abandoned = True
        log.warning("the audio input delivered nothing for %.0f s after the stop (a pipe or FIFO with a silent "
                    "writer?); ending the session without waiting for it", self.config.input_stop_grace_s)
        if not self.paused:
            for segment in self.segmenter.flush():  # the segmenter thread is stuck in the read, not in here
                self._segments += 1
                threading.Thread(target=self.worker.submit, args=(segment,), daemon=True).start()
        threading.Thread(target=self.worker.close, name="worker-close", daemon=True).start()

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
        not_stored = {"points": 0, "marks": 0}
        for sink in self.sinks:  # outputs that keep their own account of what they could not write (the store)
            for what in not_stored:
                count = getattr(sink, f"dropped_{what}", 0)
                not_stored[what] += count if isinstance(count, int) else 0
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
            nonspeech_segments=self.segmenter.discarded_nonspeech,
            nonspeech_seconds=round(self.segmenter.nonspeech_seconds, 3),
            points_not_stored=not_stored["points"],
            marks_not_stored=not_stored["marks"],
            output_failures=dict(self._output_failures),
            inverted_channels=[c + 1 for c in stats.inverted_channels],
            counting=self.speakers.count if self.speakers is not None else "all",
            speaker_seconds={k: round(v, 3) for k, v in self._speaker_seconds.items()},
            points_counted=self._points_counted,
            calibration=calibration_status(self.session.settings),
        )


def output_name(sink: object) -> str:
    """How the summary names an output: its ``output_name`` ("store", "jsonl", "dashboard") or its class."""
    name = getattr(sink, "output_name", None)
    return name if isinstance(name, str) else type(sink).__name__


def new_session_id() -> str:
    """Sortable and unique: UTC start time plus a random suffix."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
