"""``StoreSink``: the pipeline's output into the store, with its own writer thread.

Why a thread and a queue: the pipeline's dispatch thread must never wait for
the disk (a stalled commit would stall the live dashboard and, eventually, the
audio). The sink's methods only put events on a bounded queue; the writer
thread commits each batch (whatever is queued when it wakes) as one
transaction at once, so a point is durable milliseconds after ``point()``
returns and SIGKILL loses at most what was still in flight.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from monitor.history.store import Store
from monitor.live.events import Mark, Point, SessionInfo, Status

if TYPE_CHECKING:  # pragma: no cover
    from monitor.live.heatmap import RollingHeatmap

log = logging.getLogger(__name__)

#: The writer stamps the session this often even without points, so other processes see it is alive.
HEARTBEAT_S = 2.0
BATCH_MAX = 1000

_START, _POINT, _MARK, _AUDIO, _END, _EDIT = "start", "point", "mark", "audio", "end", "edit"
_Item = tuple[str, Any]


@dataclass
class _Batch:
    """What the writer took off the queue in one wake-up, sorted by kind."""

    start: SessionInfo | None = None
    points: list[Point] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    audio: list[tuple[int, np.ndarray]] = field(default_factory=list)
    edits: list[tuple[Mark, Mark | None]] = field(default_factory=list)  # (mark, new version or None: deleted)
    end: tuple[float, float | None, dict[str, float] | None] | None = None  # (wall time, audio s, speech per voice)

    @classmethod
    def of(cls, items: list[_Item]) -> "_Batch":
        batch = cls()
        for kind, value in items:
            if kind == _START:
                batch.start = value
            elif kind == _POINT:
                batch.points.append(value)
            elif kind == _MARK:
                batch.marks.append(value)
            elif kind == _AUDIO:
                batch.audio.append(value)
            elif kind == _EDIT:
                batch.edits.append(value)
            elif kind == _END:
                batch.end = value
        return batch


class StoreSink:
    """Stores a live session: the pipeline's calls only enqueue; a writer thread commits.

    The queue is bounded (``max_queue``); if the disk stalls long enough to fill
    it, further events are dropped and counted, never blocking the audio path.
    Points, marks and audio segments are counted apart (``dropped_points``,
    ``dropped_marks``, ``dropped_audio``; ``dropped`` is ``dropped_points``),
    under a lock, because both the caller's thread and the writer drop.
    Audio is kept only with ``keep_audio``, at most ``max_audio_pending`` at a time.
    The pipeline reads these counters for the session summary, which says what was
    not stored, and the CLI exits with a distinct code when anything was not.
    """

    output_name = "store"

    def __init__(self, store: Store, patient_id: str | None = None, keep_audio: bool = False,
                 max_queue: int = 10_000, max_audio_pending: int = 64):
        self.store = store
        self.patient_id = patient_id
        self.keep_audio = bool(keep_audio)
        self.max_audio_pending = max_audio_pending
        self.session: SessionInfo | None = None
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards the counters and the pending-audio count
        self._counts = {"points": 0, "marks": 0, "audio": 0, "write_errors": 0}
        self._audio_pending = 0
        self._created = False  # writer thread only
        self._last_beat = 0.0  # writer thread only
        self._audio_seconds: float | None = None  # the session time reached, from the pipeline's status
        self._speaker_seconds: dict[str, float] | None = None  # speech per attributed voice, from the status
        #: Points not stored because they are not the patient's (another voice; see ``Point.counted``).
        self.uncounted_points = 0
        self._gone = False  # writer thread only: the session's rows were deleted while it ran

    # -- counters (read from any thread)
    @property
    def dropped_points(self) -> int:
        return self._get("points")

    @property
    def dropped_marks(self) -> int:
        return self._get("marks")

    @property
    def dropped_audio(self) -> int:
        return self._get("audio")

    @property
    def write_errors(self) -> int:
        """Failed write attempts (a retried write that then succeeded counts too)."""
        return self._get("write_errors")

    @property
    def dropped(self) -> int:
        """Points lost (queue full or write failed); marks and audio are counted apart."""
        return self.dropped_points

    def _get(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def _count(self, name: str, n: int = 1) -> int:
        with self._lock:
            self._counts[name] += n
            return self._counts[name]

    # -- PointSink
    def start(self, session: SessionInfo, heatmap: RollingHeatmap | None = None) -> None:
        self.session = session
        self._put((_START, session), "points")
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def point(self, point: Point) -> None:
        """Queue a point; one that is not the patient's (``counted`` False) is not stored (docs/store.md says why)."""
        if not point.counted:
            self.uncounted_points += 1
            return
        self._put((_POINT, point), "points")

    def mark(self, mark: Mark) -> None:
        self._put((_MARK, mark), "marks")

    def edit_mark(self, old: Mark, new: Mark | None) -> None:
        """Queue a mark's new text (or its deletion, ``new=None``): written after the mark itself, in order."""
        self._put((_EDIT, (old, new)), "marks")

    def status(self, status: Status) -> None:
        self._audio_seconds = float(status.t)  # the writer keeps its own heartbeat; the end records this
        self._speaker_seconds = dict(status.speaker_seconds) or None

    def segment_audio(self, point: Point, audio: np.ndarray) -> None:
        """Queue a segment's audio (float32, 16 kHz mono) for storage; ignored unless ``keep_audio``."""
        if not self.keep_audio or not point.counted:  # another voice's audio is not the patient's to keep
            return
        with self._lock:
            if self._audio_pending >= self.max_audio_pending:
                self._counts["audio"] += 1
                return
            self._audio_pending += 1
        if not self._put((_AUDIO, (int(point.index), np.array(audio, dtype=np.float32, copy=True))), "audio"):
            self._audio_done()

    def close(self) -> None:
        """Flush what is queued, record a clean end, stop the writer (waits; called once the session is over)."""
        if self._thread is None:
            return
        try:
            self._queue.put((_END, (time.time(), self._audio_seconds, self._speaker_seconds)), timeout=10.0)
        except queue.Full:
            log.error("the store writer is stuck; the session end could not be recorded")
        self._thread.join(timeout=60.0)
        if self._thread.is_alive():
            log.error("the store writer did not finish within 60 s; some points may be missing")
        self._thread = None
        with self._lock:
            counts = dict(self._counts)
        if any(counts.values()):
            log.warning("store: %d points, %d marks and %d audio segments dropped, %d write errors",
                        counts["points"], counts["marks"], counts["audio"], counts["write_errors"])

    def _put(self, item: _Item, what: str) -> bool:
        """Enqueue without waiting; when the queue is full, count the item as dropped (``what``)."""
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            n = self._count(what)
            if n == 1 or n % 100 == 0:
                log.error("store queue full (disk too slow?): %d %s dropped so far", n, what)
            return False

    def _audio_done(self, n: int = 1) -> None:
        with self._lock:
            self._audio_pending -= n

    # -- the writer thread
    def _run(self) -> None:
        self._last_beat = time.monotonic()
        done = False
        while not done:
            batch = _Batch.of(self._take())
            done = batch.end is not None
            self._write(batch)
        self.store.checkpoint()
        self.store.release_thread_connection()  # the thread ends; a long-lived Store must not keep its connection

    def _take(self) -> list[_Item]:
        """Wait for the next event (at most a heartbeat), then everything else already queued."""
        try:
            items = [self._queue.get(timeout=HEARTBEAT_S)]
        except queue.Empty:
            return []
        while len(items) < BATCH_MAX:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _write(self, batch: _Batch) -> None:
        sid = self.session.session_id if self.session else ""
        if batch.start is not None:
            self._created = self._retry(partial(self.store.begin_session, batch.start, self.patient_id))
        if not self._created or self._gone:
            self._lose(batch)
            return
        if batch.points or batch.marks or time.monotonic() - self._last_beat >= HEARTBEAT_S:
            if not self._retry(partial(self.store.write_batch, sid, batch.points, batch.marks)):
                self._count("points", len(batch.points))
                self._count("marks", len(batch.marks))
            self._last_beat = time.monotonic()
        for old, new in batch.edits:  # after this batch's new marks, which an edit may refer to
            if not self._retry(partial(self.store.edit_mark, sid, old.t, old.wall_time,
                                       None if new is None else new.text)):
                self._count("marks")
        for index, samples in batch.audio:
            if not self._retry(partial(self.store.add_segment_audio, sid, index, samples)):
                self._count("audio")
            self._audio_done()
        if batch.end is not None:
            ended_at, audio_seconds, speaker_seconds = batch.end
            self._retry(partial(self.store.end_session, sid, ended_at, audio_seconds=audio_seconds,
                                speaker_seconds=speaker_seconds))

    def _lose(self, batch: _Batch) -> None:
        """The session row could not be created, or was deleted: count what this batch held as dropped."""
        if not (batch.points or batch.marks or batch.audio):
            return
        self._count("points", len(batch.points))
        self._count("marks", len(batch.marks))
        self._count("audio", len(batch.audio))
        self._audio_done(len(batch.audio))
        log.error("store: the session %s; %d points, %d marks and %d audio segments not stored",
                  "was deleted while it ran" if self._gone else "could not be created", len(batch.points),
                  len(batch.marks), len(batch.audio))

    def _retry(self, fn: Callable[[], object], attempts: int = 3) -> bool:
        """Run a write, retrying briefly (a reader holding a lock, a full disk being cleared); False on failure."""
        errors: tuple[type[BaseException], ...] = (*self.store.errors, OSError)  # the backend's, and the disk's
        for attempt in range(attempts):
            try:
                fn()
                return True
            except KeyError as exc:  # the session (or its patient) was deleted meanwhile: retrying cannot help
                self._count("write_errors")
                self._gone = True
                log.error("store write failed: %s (deleted while the session ran); nothing more of this session "
                          "is stored", exc)
                return False
            except errors as exc:
                self._count("write_errors")
                log.error("store write failed (attempt %d/%d): %s", attempt + 1, attempts, exc)
                time.sleep(0.2 * (attempt + 1))
        return False
