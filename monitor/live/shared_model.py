"""One model for many sessions: the heavy backbone pass is batched *across* sessions, the light head per session.

A clinic's server runs one session per room. Each session keeps its own
``EmbeddingWorker`` (its queue, its retries, its speaker attribution), but the
workers do not each own a copy of the encoder: they hand their waveforms to a
``FeatureService``, which pools what all sessions have waiting into one
forward pass. What differs between sessions (the patient's enrolment
baseline) is applied afterwards, per session, by ``PooledModel`` on the
returned features, so one batch can mix patients::

    session A worker ─┐                                   ┌─▶ A: normalise with A's baseline → head
    session B worker ─┼─▶ FeatureService: one backbone ───┼─▶ B: …
    session C worker ─┘   forward over A+B+C's segments   └─▶ C: …

``BatchingFeatureService`` is the in-process service (one thread next to the
model); a Ray Serve pool (``monitor.live.ray_pool``) is another, for a
cluster of GPU machines. Both fit ``FeatureService``.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from monitor.live.worker import next_batch

if TYPE_CHECKING:  # pragma: no cover
    from calibration.speaker import SpeakerBaseline
    from monitor.model.emotion import EmotionModel

log = logging.getLogger(__name__)

#: Passes whose batch size a service remembers (a server runs for weeks: the record must not grow with it).
RECENT_BATCHES = 10_000


class FeatureService(Protocol):
    """Pooled backbone features for waveforms; safe to call from many threads at once."""

    def features(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """16 kHz float32 waveforms -> backbone features [len(waves), D] (float32)."""
        ...

    def close(self) -> None:
        """Finish what is queued and let go of the model (or the pool)."""
        ...


class PooledModel:
    """A session's view of a shared model: its ``embed_waveforms`` fits the worker's ``EmbeddingModel``."""

    def __init__(self, model: EmotionModel, service: FeatureService) -> None:
        self.model = model
        self.service = service

    def embed_waveforms(self, waves: Sequence[np.ndarray],
                        baseline: SpeakerBaseline | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.model.embed_features(self.service.features(waves), baseline)


class ServiceClosed(RuntimeError):
    """The feature service was closed; the segment was not analysed."""


@dataclass
class BatchingConfig:
    """max_batch: segments per forward pass, over all sessions. max_wait_ms: once one request is waiting, how
    long to wait for others to join its batch (0: take only what is already queued, the lowest latency).
    queue_size: requests waiting at most (a session's worker blocks beyond it: back-pressure)."""

    max_batch: int = 16
    max_wait_ms: float = 0.0
    queue_size: int = 256

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.queue_size < 1 or self.max_wait_ms < 0:
            raise ValueError("batch size and queue size must be >= 1, wait >= 0")


_Request = tuple[Sequence[np.ndarray], "Future[np.ndarray]"]


class BatchingFeatureService:
    """In-process ``FeatureService``: one thread runs the backbone on requests from every session, batched.

    A request is one worker's batch (a list of waveforms); requests are joined whole until ``max_batch``
    segments. A failed pass is retried request by request, so one session's bad segment fails only that
    session's call (its worker then retries segment by segment, as it does with a private model).
    """

    def __init__(self, model: EmotionModel, config: BatchingConfig | None = None) -> None:
        self.model = model
        self.config = config or BatchingConfig()
        self._requests: queue.Queue[_Request | None] = queue.Queue(maxsize=self.config.queue_size)
        self._thread = threading.Thread(target=self._run, name="shared-model", daemon=True)
        self._closed = threading.Event()
        self.passes = 0
        self.segments = 0
        self.batch_sizes: deque[int] = deque(maxlen=RECENT_BATCHES)  # of the recent passes

    def start(self) -> "BatchingFeatureService":
        self._thread.start()
        return self

    def features(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        if self._closed.is_set():
            raise ServiceClosed("the shared model has been closed")
        future: Future[np.ndarray] = Future()
        while True:  # wait while the queue is full, but not past close()
            try:
                self._requests.put((list(waves), future), timeout=0.1)
                break
            except queue.Full:
                if self._closed.is_set():
                    raise ServiceClosed("the shared model has been closed") from None
        return future.result()

    def close(self, timeout: float = 30.0) -> None:
        """Finish the requests already queued, then stop the thread."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._thread.is_alive():
            self._requests.put(None)
            self._thread.join(timeout)
        self._fail_waiting()

    def _fail_waiting(self) -> None:
        while True:
            try:
                item = self._requests.get_nowait()
            except queue.Empty:
                return
            if item is not None and not item[1].done():
                item[1].set_exception(ServiceClosed("the shared model has been closed"))

    def _next_batch(self) -> tuple[list[_Request], bool]:
        return next_batch(self._requests, None, limit=self.config.max_batch, wait_ms=self.config.max_wait_ms,
                          weight=lambda request: len(request[0]))

    def _forward(self, waves: list[np.ndarray]) -> np.ndarray:
        feats = self.model.backbone_features(waves).detach().cpu().numpy().astype(np.float32, copy=False)
        self.passes += 1
        self.segments += len(waves)
        self.batch_sizes.append(len(waves))
        return feats

    def _serve(self, batch: list[_Request]) -> None:
        waves = [w for request in batch for w in request[0]]
        try:
            feats = self._forward(waves)
        except Exception as exc:  # noqa: BLE001 - fail only the request that fails
            if len(batch) == 1:
                batch[0][1].set_exception(exc)
                return
            for request in batch:
                self._serve([request])
            return
        start = 0
        for request_waves, future in batch:
            future.set_result(feats[start:start + len(request_waves)])
            start += len(request_waves)

    def _run(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._next_batch()
            if batch:
                self._serve(batch)
