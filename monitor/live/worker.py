"""The embedding worker: its own thread turns waiting segments into emotion embeddings (and, with enrolled
voiceprints, decides whose voice each one is, in the same batch).

It takes whatever segments are waiting (up to ``max_batch``, waiting at most
``max_wait_ms`` for more once one has arrived), runs the model on them as one
batch, and passes results on. A batch that fails is retried one segment at a
time so that one bad segment is logged, counted and skipped while the others
go through; the session goes on.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol, Sequence, Union

import numpy as np

from monitor.live.events import Embedded
from monitor.audio.frames import Segment

if TYPE_CHECKING:  # pragma: no cover
    from calibration.speaker import SpeakerBaseline
    from monitor.live.speakers import SpeakerAttributor

log = logging.getLogger(__name__)


class _Stop(enum.Enum):
    """The end-of-input marker on the segment queue."""

    STOP = enum.auto()


_STOP = _Stop.STOP
_SegmentItem = Union[Segment, Literal[_Stop.STOP]]


class EmbeddingModel(Protocol):
    """What the worker needs of a model: ``monitor.model.emotion.EmotionModel``, or a stand-in in tests."""

    def embed_waveforms(self, waves: Sequence[np.ndarray],
                        baseline: SpeakerBaseline | None = None) -> tuple[np.ndarray, np.ndarray]:
        """16 kHz float32 waveforms -> (embeddings [B, E], class probabilities [B, C])."""
        ...


@dataclass
class WorkerConfig:
    """device: auto | cpu | cuda[:N]. precision: auto (bf16/fp16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16 | int8 (CPU).

    max_wait_ms: once a segment is waiting, how long to wait for more to batch
    with it; 0 takes only what is already queued (lowest latency for one stream).
    """

    device: str = "auto"
    precision: str = "auto"
    max_batch: int = 8
    max_wait_ms: float = 0.0
    queue_size: int = 64

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.queue_size < 1 or self.max_wait_ms < 0:
            raise ValueError("worker batch size and queue size must be >= 1, wait >= 0")


class EmbeddingWorker(threading.Thread):
    """Consumes ``Segment``s from a bounded queue; puts ``Embedded`` results on ``results`` (``None`` last)."""

    def __init__(self, model: EmbeddingModel, config: WorkerConfig | None = None,
                 results: queue.Queue[Embedded | None] | None = None, baseline: SpeakerBaseline | None = None,
                 speakers: SpeakerAttributor | None = None):
        super().__init__(name="embedding-worker", daemon=True)
        self.model = model
        self.speakers = speakers  # enrolled voiceprints: each batch is also attributed to a voice
        self.config = config or WorkerConfig()
        self.baseline = baseline
        self.segments: queue.Queue[_SegmentItem] = queue.Queue(maxsize=self.config.queue_size)
        self.results: queue.Queue[Embedded | None] = (
            results if results is not None else queue.Queue(maxsize=self.config.queue_size))
        self.failed_segments = 0
        self.batches = 0
        self.last_error: str | None = None
        self._abort = threading.Event()

    # ---- producer side ---------------------------------------------------------------
    def submit(self, segment: Segment, timeout: float | None = None) -> None:
        """Queue a segment; blocks while the queue is full (back-pressure toward the source)."""
        self.segments.put(segment, timeout=timeout)

    def submit_until(self, segment: Segment, stop: threading.Event) -> bool:
        """Queue a segment, waiting while the queue is full, but not past ``stop`` (False: not queued)."""
        return put_until(self.segments, segment, stop)

    def close(self) -> None:
        """Finish the queued segments, then stop (the results queue gets ``None`` last)."""
        self.segments.put(_STOP)

    def abort(self) -> None:
        """Stop after the batch in hand: queued segments are dropped, nothing more is handed on.

        The caller then joins the thread, so that it is not inside the model's native code when the
        process exits (a thread that native code leaves during interpreter shutdown aborts the process).
        """
        self._abort.set()
        while True:  # make room, so that neither a blocked producer nor the stop marker waits
            try:
                self.segments.get_nowait()
            except queue.Empty:
                break
        try:
            self.segments.put_nowait(_STOP)
        except queue.Full:  # pragma: no cover - just emptied; the loop checks the flag anyway
            pass

    @property
    def aborted(self) -> bool:
        return self._abort.is_set()

    # ---- the thread ------------------------------------------------------------------
    def _next_batch(self) -> tuple[list[Segment], bool]:
        return next_batch(self.segments, _STOP, limit=self.config.max_batch, wait_ms=self.config.max_wait_ms)

    def _embed(self, batch: list[Segment]) -> list[Embedded]:
        waves = [s.audio for s in batch]
        embeddings, probabilities = self.model.embed_waveforms(waves, self.baseline)
        # the same batch, right after: a segment's voice is decided with its emotion, in the same order
        attributions = self.speakers(waves) if self.speakers is not None else [None] * len(batch)
        self.batches += 1
        return [Embedded(s, embeddings[i], probabilities[i], attributions[i]) for i, s in enumerate(batch)]

    def process(self, batch: list[Segment]) -> list[Embedded]:
        """Embed a batch; on failure, retry one by one and skip only the segments that fail."""
        try:
            return self._embed(batch)
        except Exception as exc:  # noqa: BLE001 - one segment must never end the session
            if len(batch) == 1:
                self.failed_segments += 1
                self.last_error = f"segment {batch[0].index} ({batch[0].t_start:.2f}-{batch[0].t_end:.2f} s): {exc}"
                log.warning("embedding failed for %s", self.last_error, exc_info=log.isEnabledFor(logging.DEBUG))
                return []
        done: list[Embedded] = []
        for segment in batch:
            done += self.process([segment])
        return done

    def run(self) -> None:
        stop = False
        while not stop and not self._abort.is_set():
            batch, stop = self._next_batch()
            if batch and not self._abort.is_set():
                for result in self.process(batch):
                    self._hand_on(result)
        self._hand_on(None)

    def _hand_on(self, item: Embedded | None) -> None:
        """Put a result on the results queue; after ``abort()`` nobody reads it, so drop it instead of waiting."""
        put_until(self.results, item, self._abort)




def next_batch(source: "queue.Queue[Any]", stop: object, *, limit: int, wait_ms: float,
               weight: Callable[[Any], int] = lambda item: 1) -> tuple[list[Any], bool]:
    """Wait for one item, then take what else is waiting (up to ``limit`` by ``weight``, waiting at most
    ``wait_ms`` for more): (the batch, whether ``stop`` was met). The embedding worker and the shared model
    batch the same way."""
    first = source.get()
    if first is stop:
        return [], True
    batch, n = [first], weight(first)
    deadline = time.monotonic() + wait_ms / 1000.0
    while n < limit:
        remaining = deadline - time.monotonic()
        try:
            item = source.get(timeout=remaining) if remaining > 0 else source.get_nowait()
        except queue.Empty:
            break
        if item is stop:
            return batch, True
        batch.append(item)
        n += weight(item)
    return batch, False


def put_until(target: "queue.Queue[Any]", item: Any, stop: threading.Event, poll_s: float = 0.1) -> bool:
    """Offer ``item`` to a bounded queue until it is taken (True) or ``stop`` is set (False).

    Back-pressure that an abort can always end: a plain blocking ``put`` would wait forever once the
    reader on the other side has stopped.
    """
    while not stop.is_set():
        try:
            target.put(item, timeout=poll_s)
            return True
        except queue.Full:
            continue
    return False
