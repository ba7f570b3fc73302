"""Audio sources: a microphone or a replayed file, each yielding fixed-length 16 kHz mono int16 frames.

Both stamp frames with session time counted in samples, so the rest of the
pipeline sees the same thing whether audio is live or replayed at any speed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Mapping

import numpy as np

from monitor.audio.io import (
    STDIN,
    AudioHandle,
    AudioInputError,
    AudioStats,
    iter_audio_blocks,
    open_audio,
    sanitize,
    to_int16,
)
from monitor.model.audio_format import SAMPLE_RATE
from monitor.audio.frames import AudioFrame

log = logging.getLogger(__name__)

PORTAUDIO_HINT = (
    "the PortAudio library is missing; install it (Debian/Ubuntu: sudo apt-get install libportaudio2, "
    "macOS: brew install portaudio) or replay a recording with --input FILE"
)


class FrameChunker:
    """Re-cuts a stream of float blocks into fixed-length int16 frames with session times."""

    def __init__(self, frame_samples: int, t0: float = 0.0):
        self.frame_samples = frame_samples
        self._buffer = np.zeros(0, dtype=np.float32)
        self._t = t0  # session time of the buffer's first sample

    def restart_at(self, t: float) -> None:
        """Drop buffered audio and continue at session time ``t`` (after a gap)."""
        self._buffer = np.zeros(0, dtype=np.float32)
        self._t = t

    def push(self, block: np.ndarray) -> Iterator[AudioFrame]:
        if len(self._buffer):
            self._buffer = np.concatenate([self._buffer, block])
        else:
            self._buffer = np.asarray(block, dtype=np.float32)
        n = self.frame_samples
        while len(self._buffer) >= n:
            yield AudioFrame(samples=to_int16(self._buffer[:n]), t_start=self._t)
            self._buffer = self._buffer[n:]
            self._t += n / SAMPLE_RATE

    def flush(self) -> Iterator[AudioFrame]:
        """The last partial frame, zero-padded to full length."""
        if len(self._buffer):
            padded = np.zeros(self.frame_samples, dtype=np.float32)
            padded[: len(self._buffer)] = self._buffer
            self._buffer = np.zeros(0, dtype=np.float32)
            yield AudioFrame(samples=to_int16(padded), t_start=self._t)
            self._t += self.frame_samples / SAMPLE_RATE


class AudioSource:
    """Base class: ``frames()`` yields ``AudioFrame`` until the input ends or ``stop()`` is called."""

    description = "audio"

    def __init__(self, frame_ms: int = 30):
        if frame_ms not in (10, 20, 30):
            raise ValueError(f"frame length must be 10, 20 or 30 ms (what the VAD accepts), got {frame_ms}")
        self.frame_ms = frame_ms
        self.frame_samples = SAMPLE_RATE * frame_ms // 1000
        self.dropped_frames = 0
        self.stats = AudioStats()
        self._stop = threading.Event()

    def frames(self) -> Iterator[AudioFrame]:  # pragma: no cover - interface
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()

    @property
    def queue_depth(self) -> int:
        return 0


class FileSource(AudioSource):
    """Replays a WAV/FLAC/OGG file, or reads a stream (``-`` for standard input, a pipe, a FIFO; WAV or Ogg):
    any rate (resampled), any channels (mixed to mono).

    ``realtime=True`` paces frames at the speed of speech, as a live session
    would; ``realtime=False`` (``--fast``) runs as fast as the pipeline allows.
    The input is opened once, here, so a bad file fails before the session
    starts and a stream is not consumed by the check. A truncated file is
    replayed as far as it goes; ``frames()`` then raises ``AudioTruncatedError``.
    """

    def __init__(self, path: str | Path, frame_ms: int = 30, realtime: bool = True):
        super().__init__(frame_ms)
        self.path = Path(path)
        self.realtime = realtime
        self.stream = str(path) == STDIN
        self.description = "stdin" if self.stream else f"file:{self.path.name}"
        self._handle: AudioHandle | None = open_audio(STDIN if self.stream else self.path)
        self.stream = self._handle.stream
        problem = self._handle.truncation
        if problem is not None:
            log.warning("%s is truncated (%s): analysing what it holds; the session will be reported as ended "
                        "early", self._handle.name, problem)

    def close(self) -> None:
        """Let go of the input without reading it (a session that never started)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _input(self) -> AudioHandle:
        handle, self._handle = self._handle, None
        if handle is not None:
            return handle
        if self.stream:
            raise AudioInputError(f"{self.description} is a stream: it can be read only once")
        return open_audio(self.path)

    def frames(self) -> Iterator[AudioFrame]:
        chunker = FrameChunker(self.frame_samples)
        started = time.monotonic()
        for block in iter_audio_blocks(self._input(), block_seconds=0.5, stats=self.stats):
            for frame in chunker.push(block):
                if self._stop.is_set():
                    return
                if self.realtime:
                    delay = started + frame.t_end - time.monotonic()
                    if delay > 0:
                        self._stop.wait(delay)
                yield frame
        yield from chunker.flush()


@dataclass
class _Block:
    data: np.ndarray
    start_sample: int  # at the device's rate


class MicrophoneSource(AudioSource):
    """Live capture with sounddevice.

    PortAudio's callback thread only copies blocks into a bounded queue; when
    the consumer falls behind, new blocks are dropped and counted (the session
    time still advances, so later points keep true times). Rate conversion and
    down-mixing happen in the consumer, never in the callback.
    """

    def __init__(self, device: int | str | None = None, frame_ms: int = 30, queue_seconds: float = 10.0,
                 stall_timeout: float = 5.0):
        super().__init__(frame_ms)
        sd = import_sounddevice()
        self._sd = sd
        self.device = device
        self.stall_timeout = stall_timeout
        try:
            info = sd.query_devices(device, kind="input")
        except (ValueError, sd.PortAudioError) as exc:
            which = "no default microphone" if device is None else f"no input device {device!r}"
            raise AudioInputError(
                f"{which} ({exc}); list devices with --list-devices and pick one with --device N, "
                "or replay a recording with --input FILE"
            ) from exc
        if int(info.get("max_input_channels", 0)) < 1:
            raise AudioInputError(
                f"device {info.get('name', device)!r} has no input channels; choose another with --device")
        self.device_name = str(info.get("name", device))
        self.description = f"mic:{self.device_name}"
        self.channels = 1
        self.rate = self._supported_rate(info)
        self.block_samples = max(int(self.rate * frame_ms / 1000), 1)
        self._queue: queue.Queue[_Block] = queue.Queue(maxsize=max(int(queue_seconds * 1000 / frame_ms), 4))
        self._captured = 0  # samples delivered by the callback, including dropped ones

    def _supported_rate(self, info: Mapping[str, Any]) -> int:
        """16 kHz when the device takes it, else its default rate (resampled later)."""
        try:
            self._sd.check_input_settings(device=self.device, channels=1, dtype="float32", samplerate=SAMPLE_RATE)
            return SAMPLE_RATE
        except Exception:
            return int(info.get("default_samplerate") or 48_000)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def _callback(self, indata: np.ndarray, frames: int, time_info: object, status: object) -> None:
        """PortAudio's thread: copy the block into the queue, or count it as dropped."""
        block = _Block(np.array(indata[:, 0], dtype=np.float32, copy=True), self._captured)
        self._captured += frames
        try:
            self._queue.put_nowait(block)
        except queue.Full:
            self.dropped_frames += max(1, round(frames / self.block_samples))

    def frames(self) -> Iterator[AudioFrame]:
        import soxr

        sd = self._sd
        chunker = FrameChunker(self.frame_samples)
        resampler = (None if self.rate == SAMPLE_RATE
                     else soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="float32"))
        expected = 0
        try:
            stream = sd.InputStream(device=self.device, channels=self.channels, samplerate=self.rate,
                                    blocksize=self.block_samples, dtype="float32", callback=self._callback)
            stream.start()
        except Exception as exc:
            raise AudioInputError(f"cannot open microphone {self.device_name!r}: {exc}; try another --device") from exc
        log.info("capturing from %s at %d Hz", self.device_name, self.rate)
        last_audio = time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    block = self._queue.get(timeout=0.2)
                except queue.Empty:
                    if time.monotonic() - last_audio > self.stall_timeout or not stream.active:
                        raise AudioInputError(
                            f"the microphone {self.device_name!r} stopped delivering audio (unplugged?); "
                            "the session so far is kept"
                        ) from None
                    continue
                last_audio = time.monotonic()
                if block.start_sample != expected:  # blocks were dropped: continue at the true time
                    chunker.restart_at(block.start_sample / self.rate)
                    if resampler is not None:
                        resampler = soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="float32")
                expected = block.start_sample + len(block.data)
                data = sanitize(block.data, self.stats)
                if resampler is not None:
                    data = resampler.resample_chunk(data)
                yield from chunker.push(data)
        finally:
            stream.stop()
            stream.close()


def import_sounddevice() -> ModuleType:
    """Import sounddevice lazily, turning a missing PortAudio into a message that says what to install."""
    try:
        import sounddevice as sd
    except OSError as exc:
        raise AudioInputError(f"{PORTAUDIO_HINT} ({exc})") from exc
    except ImportError as exc:
        raise AudioInputError(f"the sounddevice package is not installed ({exc}); pip install sounddevice") from exc
    module: ModuleType = sd  # sounddevice ships no type information
    return module


def list_devices() -> str:
    """A table of audio devices, as --list-devices prints it; AudioInputError when there is none at all."""
    sd = import_sounddevice()
    try:
        devices = sd.query_devices()
    except Exception as exc:  # noqa: BLE001 - PortAudio's errors have no common base worth naming
        raise AudioInputError(f"cannot list the audio devices: {exc}") from exc
    table = str(devices).strip()
    if not len(devices) or not table:
        raise AudioInputError("no audio devices found (no sound card, or PortAudio cannot see it: check that the "
                              "user may use audio devices); you can still replay a recording with --input FILE")
    return table
