"""Audio that arrives over the network: a room streams 16 kHz mono PCM, the server's session reads frames.

Why its own source: the microphone's callback can drop blocks when the
pipeline falls behind, but a room's audio must not be lost (a dropped
connection is resumed and re-sent), so here the producer is *held back*
instead: ``offer`` refuses a chunk while the bounded queue is full and the
server stops reading that room's socket until there is room again, which the
network turns into back-pressure on the room. Session time is counted in
samples received, so a resumed connection continues the same timeline with
no gap and no overlap.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import numpy as np

from monitor.audio.frames import AudioFrame
from monitor.audio.io import AudioInputError, sanitize
from monitor.audio.sources import AudioSource, FrameChunker
from monitor.model.audio_format import SAMPLE_RATE

_END = None


class PushedAudioSource(AudioSource):
    """Frames from PCM chunks that another thread (the server's loop) offers; ``end()`` finishes the stream.

    queue_seconds: audio held waiting for the segmenter at most; beyond it ``offer`` says no (back-pressure).
    idle_timeout_s: how long the stream may deliver nothing before it counts as abandoned (a room that went
    away and never resumed); ``None`` waits for ever (the server ends abandoned sessions itself).
    """

    def __init__(self, description: str = "room", frame_ms: int = 30, queue_seconds: float = 10.0,
                 idle_timeout_s: float | None = None) -> None:
        super().__init__(frame_ms)
        self.description = description
        self.idle_timeout_s = idle_timeout_s
        self.queued_samples = 0
        self.received_samples = 0
        self._limit = int(queue_seconds * SAMPLE_RATE)
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue()
        self._lock = threading.Lock()
        self._ended = False

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def received_seconds(self) -> float:
        return self.received_samples / SAMPLE_RATE

    def offer(self, pcm: np.ndarray) -> bool:
        """Queue int16 (or float32 in [-1, 1]) mono 16 kHz samples; False: full, offer again later. Any thread."""
        samples = np.asarray(pcm)
        if samples.ndim != 1:
            raise ValueError("audio chunks must be mono (one dimension)")
        with self._lock:
            if self._ended:
                raise AudioInputError("the stream has ended")
            if self.queued_samples and self.queued_samples + len(samples) > self._limit:
                return False
            self.queued_samples += len(samples)
            self.received_samples += len(samples)
        self._queue.put(samples)
        return True

    def end(self) -> None:
        """No more audio: the session drains what is queued and finishes. Any thread; idempotent."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
        self._queue.put(_END)

    def stop(self) -> None:
        super().stop()
        self.end()

    def frames(self) -> Iterator[AudioFrame]:
        chunker = FrameChunker(self.frame_samples)
        while True:
            try:
                chunk = self._queue.get(timeout=self.idle_timeout_s)
            except queue.Empty:
                raise AudioInputError(f"{self.description} sent no audio for {self.idle_timeout_s:.0f} s; "
                                      "the session so far is kept") from None
            if chunk is _END:
                break
            with self._lock:
                self.queued_samples -= len(chunk)
            data = chunk.astype(np.float32) / 32768.0 if chunk.dtype == np.int16 else chunk.astype(np.float32)
            yield from chunker.push(sanitize(data, self.stats))
        yield from chunker.flush()
