"""Reading any audio file soundfile can open into clean 16 kHz mono float32.

Kept apart from the live sources because training, enrolment and evaluation
read files too, and all of them must treat odd inputs the same way: any
sample rate is resampled (soxr), any channel count is mixed to mono (a
phase-inverted channel is turned round first, so it cannot cancel the others),
NaN/inf samples are zeroed and counted, and values are clipped to [-1, 1].

A file whose header promises more audio than it holds (a truncated WAV, an Ogg
stream without its end-of-stream page, a FLAC cut mid-frame) yields what is
there and then raises :class:`AudioTruncatedError`. Streams (``-`` for standard
input, a pipe, a FIFO) are opened once and read as they come, for the formats
libsndfile can read from a stream (WAV, Ogg); their length is unknown, so they
are never "truncated".
"""

from __future__ import annotations

import logging
import os
import stat
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from monitor.model.audio_format import SAMPLE_RATE

log = logging.getLogger(__name__)

#: ``--input -``: read standard input.
STDIN = "-"

#: A channel whose correlation with the reference channel falls below minus this is taken as phase-inverted.
INVERTED_CORRELATION = 0.5


class AudioInputError(RuntimeError):
    """An audio input cannot be used; the message says which and why."""


class AudioTruncatedError(AudioInputError):
    """The input ended before its header said it would; everything that was there has been yielded."""

    def __init__(self, message: str, seconds_read: float, seconds_expected: float | None = None) -> None:
        super().__init__(message)
        self.seconds_read = seconds_read
        self.seconds_expected = seconds_expected


@dataclass
class AudioStats:
    """What was repaired while reading, so a session summary can say so."""

    nonfinite_samples: int = 0
    clipped_samples: int = 0
    source_rate: int = SAMPLE_RATE
    source_channels: int = 1
    #: Channels (0-based) that were phase-inverted against channel 0 and turned round before mixing.
    inverted_channels: list[int] = field(default_factory=list)


def sanitize(block: np.ndarray, stats: AudioStats | None = None) -> np.ndarray:
    """Zero NaN/inf samples and clip to [-1, 1]; float32 out."""
    block = np.asarray(block, dtype=np.float32)
    bad = ~np.isfinite(block)
    if bad.any():
        block = np.where(bad, np.float32(0.0), block)
        if stats is not None:
            stats.nonfinite_samples += int(bad.sum())
    over = np.abs(block) > 1.0
    if over.any():
        block = np.clip(block, -1.0, 1.0)
        if stats is not None:
            stats.clipped_samples += int(over.sum())
    return block


class Downmixer:
    """Multichannel blocks to mono, so that channels in opposite phase cannot cancel each other out.

    A plain average of a stereo recording whose second channel is the first
    one inverted (a miswired microphone, a "phase-inverted" export) is
    silence. Each channel's polarity against channel 0 is decided from its
    correlation in the block and kept (it only flips on clear evidence, so
    uncorrelated channels keep a stable mix); inverted channels are turned
    round before the average. ``stats.inverted_channels`` lists them.
    """

    def __init__(self, channels: int, stats: AudioStats | None = None, name: str = "the input") -> None:
        self.signs = np.ones(channels, dtype=np.float32)
        self.stats = stats
        self.name = name

    def __call__(self, block: np.ndarray) -> np.ndarray:
        if block.ndim == 1:
            return block
        if block.shape[1] == 1 or len(block) == 0:
            first: np.ndarray = block[:, 0]
            return first if block.shape[1] == 1 else block.mean(axis=1)
        clean = np.where(np.isfinite(block), block, np.float32(0.0))
        ref = clean[:, 0]
        ref_energy = float(np.dot(ref, ref))
        for c in range(1, block.shape[1]):
            other = clean[:, c]
            energy = float(np.dot(other, other))
            if ref_energy <= 1e-9 * len(ref) or energy <= 1e-9 * len(ref):
                continue  # silence in either channel says nothing about polarity
            corr = float(np.dot(ref, other)) / np.sqrt(ref_energy * energy)
            if corr * self.signs[c] < -INVERTED_CORRELATION:
                self.signs[c] = -self.signs[c]
                inverted = self.signs[c] < 0
                if self.stats is not None:
                    if inverted and c not in self.stats.inverted_channels:
                        self.stats.inverted_channels.append(c)
                    elif not inverted and c in self.stats.inverted_channels:
                        self.stats.inverted_channels.remove(c)
                log.warning("channel %d of %s is %s against channel 1 (correlation %.2f); %s before mixing to mono",
                            c + 1, self.name, "phase-inverted" if inverted else "back in phase", corr,
                            "turned round" if inverted else "mixed as it is")
        mixed: np.ndarray = (block * self.signs).mean(axis=1)
        return mixed


@dataclass
class AudioHandle:
    """An open input: the ``soundfile.SoundFile`` (untyped), what it is called, and whether it is a stream."""

    sound: Any
    name: str
    stream: bool
    fd: int
    #: Frames the header promises (for files whose header says so); None for streams and unknown lengths.
    expected_frames: int | None = None
    #: Why the container is visibly incomplete (an Ogg stream without its end page), found when opening.
    unfinished: str | None = None

    @property
    def truncation(self) -> str | None:
        """What is known at opening about the file holding less than its header promises, else None."""
        if self.unfinished is not None:
            return self.unfinished
        if self.expected_frames is not None and self.expected_frames > int(self.sound.frames) + 16:
            rate = float(self.sound.samplerate)
            return (f"its header says {self.expected_frames / rate:.1f} s, the file holds "
                    f"{int(self.sound.frames) / rate:.1f} s")
        return None

    def close(self) -> None:
        if self.fd < 0:
            return
        try:
            self.sound.close()
        except Exception:  # noqa: BLE001 - closing a broken stream must not hide the real error
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass
        self.fd = -1

    def __del__(self) -> None:  # an input opened but never read (a session that did not start) is let go
        self.close()


def is_stream(path: str | Path) -> bool:
    """Standard input (``-``), a FIFO, a character device or a socket: read once, as it comes."""
    if str(path) == STDIN:
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)


def open_audio(path: str | Path) -> AudioHandle:
    """Open a file or stream once; :class:`AudioInputError` says what is wrong (missing, a folder, no permission,
    not audio, empty). A FIFO blocks here until something writes to it."""
    import soundfile as sf

    name = "standard input" if str(path) == STDIN else str(path)
    stream = is_stream(path)
    fd = _descriptor(path, stream)
    try:
        sound = sf.SoundFile(fd, closefd=False)  # the descriptor is ours to close, whatever happens
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        os.close(fd)
        if stream:
            raise AudioInputError(
                f"cannot read {name} as an audio stream ({exc}); streamed input must be WAV or Ogg "
                "(e.g. sox ... -t wav -); FLAC and MP3 need a seekable file") from exc
        raise AudioInputError(
            f"cannot read {name} as audio ({exc}); use a WAV, FLAC or OGG file that soundfile can open") from exc
    handle = AudioHandle(sound, name, stream, fd)
    if not stream:
        if sound.frames == 0 or sound.samplerate <= 0:
            problem = _container_truncation(Path(path), sound)
            handle.close()
            if problem is not None:
                raise AudioInputError(f"{name} is truncated ({problem}); no audio could be read from it")
            raise AudioInputError(f"{name} holds no audio samples")
        handle.expected_frames = _header_frames(Path(path), sound)
        handle.unfinished = _container_truncation(Path(path), sound)
    if sound.channels < 1:
        handle.close()
        raise AudioInputError(f"{name} has no audio channels")
    return handle


def _descriptor(path: str | Path, stream: bool) -> int:
    """A file descriptor to read ``path`` from (standard input for ``-``); AudioInputError says why not."""
    if str(path) == STDIN:
        return os.dup(sys.stdin.fileno())
    p = Path(path)
    if not p.exists():
        raise AudioInputError(f"audio file not found: {p}")
    if p.is_dir():
        raise AudioInputError(f"{p} is a folder, not an audio file")
    if stream and stat.S_ISFIFO(os.stat(p).st_mode):
        log.info("waiting for audio on the FIFO %s (Ctrl-C to give up)", p)
    try:
        return os.open(p, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except PermissionError as exc:
        raise AudioInputError(f"permission denied: cannot read {p} (check the file's permissions, "
                              f"or run as a user who may read it)") from exc
    except OSError as exc:
        raise AudioInputError(f"cannot open {p}: {exc.strerror or exc}") from exc


def _header_frames(path: Path, sound: Any) -> int:
    """The frames the file's header promises: libsndfile's count, or more where it quietly shortened it.

    libsndfile reports a truncated WAV's length as what the file holds, not what its header says;
    the header's data chunk size is read here (RIFF/WAVE only; other formats keep libsndfile's count).
    """
    frames = int(sound.frames)
    if str(sound.format) != "WAV":
        return frames
    try:
        declared = _wav_data_bytes(path)
    except OSError:
        return frames
    if declared is None:
        return frames
    subtype_bytes = {"PCM_U8": 1, "PCM_S8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8,
                     "ULAW": 1, "ALAW": 1}.get(str(sound.subtype))
    if subtype_bytes is None:
        return frames
    return max(frames, declared // (subtype_bytes * int(sound.channels)))


def _wav_data_bytes(path: Path) -> int | None:
    """The size of a RIFF/WAVE file's ``data`` chunk as its header states it (None: not found, or streaming size)."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        for _ in range(64):  # a handful of chunks precede the data
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"data":
                return None if size in (0, 0xFFFFFFFF) else int(size)  # 0 / max: written by a streaming recorder
            f.seek(size + (size & 1), os.SEEK_CUR)
    return None


def _container_truncation(path: Path, sound: Any) -> str | None:
    """Why a container is incomplete, when that can be seen without decoding (Ogg: no end-of-stream page)."""
    if str(sound.format) != "OGG":
        return None
    try:
        return _ogg_unfinished(path)
    except OSError:
        return None


def _ogg_unfinished(path: Path) -> str | None:
    """None when the file's last Ogg page is complete and carries the end-of-stream flag; else what is wrong."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - 131_072))
        tail = f.read()
    at = tail.rfind(b"OggS")
    if at < 0:
        return "no Ogg page at the end of the file"
    header = tail[at:at + 27]
    segments = header[26] if len(header) == 27 else 0
    table = tail[at + 27:at + 27 + segments]
    end = at + 27 + segments + sum(table)
    if len(header) < 27 or len(table) < segments or end > len(tail):
        return "its last Ogg page is cut short"
    if end < len(tail):
        return "there is junk after its last Ogg page"
    if not header[5] & 0x04:
        return "its Ogg stream ends without the end-of-stream page"
    return None


def iter_audio_blocks(source: str | Path | AudioHandle, block_seconds: float = 1.0,
                      stats: AudioStats | None = None) -> Iterator[np.ndarray]:
    """Stream a file (or an already opened handle) as 16 kHz mono float32 blocks, resampling on the fly.

    A truncated file yields what could be read, then raises :class:`AudioTruncatedError`;
    a file that breaks while being read raises :class:`AudioInputError`.
    """
    import soundfile as sf
    import soxr

    handle = source if isinstance(source, AudioHandle) else open_audio(source)
    sound = handle.sound
    stats = stats if stats is not None else AudioStats()
    stats.source_rate, stats.source_channels = int(sound.samplerate), int(sound.channels)
    resampler = None if sound.samplerate == SAMPLE_RATE else soxr.ResampleStream(
        sound.samplerate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
    downmix = Downmixer(int(sound.channels), stats, handle.name)
    block_frames = max(int(sound.samplerate * block_seconds), 1)
    read = 0
    try:
        while True:
            try:
                data = sound.read(block_frames, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise AudioInputError(f"{handle.name} is truncated or corrupt after {read / sound.samplerate:.1f} s "
                                      f"of audio: {exc}") from exc
            read += len(data)
            last = len(data) < block_frames
            mono = sanitize(downmix(data), stats)
            if resampler is not None:
                mono = resampler.resample_chunk(mono, last=last)
            if len(mono):
                yield mono
            if last:
                break
        problem = _missing_audio(handle, read)
        if problem is not None:
            raise problem
    finally:
        handle.close()


def _missing_audio(handle: AudioHandle, read: int) -> AudioTruncatedError | None:
    """The error for a file that held less than its header promised (a few frames of slack), else None."""
    rate = float(handle.sound.samplerate)
    expected = handle.expected_frames
    if handle.stream:
        return None
    if expected is not None and read < expected - max(16, int(0.001 * rate)):
        return AudioTruncatedError(
            f"{handle.name} is truncated: its header says {expected / rate:.1f} s, only {read / rate:.1f} s "
            "could be read", seconds_read=read / rate, seconds_expected=expected / rate)
    if handle.unfinished is not None:
        return AudioTruncatedError(f"{handle.name} is truncated ({handle.unfinished}); {read / rate:.1f} s could "
                                   "be read", seconds_read=read / rate)
    return None


def read_audio(path: str | Path, stats: AudioStats | None = None) -> np.ndarray:
    """A whole file as 16 kHz mono float32 (for clips: training, enrolment, evaluation).

    A truncated file gives what it holds, with a warning in the log (a clip is used whole or not at all
    by the callers, and half a clip is still that speaker's speech).
    """
    blocks: list[np.ndarray] = []
    try:
        for block in iter_audio_blocks(path, block_seconds=10.0, stats=stats):
            blocks.append(block)
    except AudioTruncatedError as exc:
        log.warning("%s; using the %.1f s that are there", exc, exc.seconds_read)
    audio = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
    if len(audio) == 0:
        raise AudioInputError(f"{path} holds no audio samples")
    return audio


def to_int16(block: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16 PCM (what the VAD and the frames carry)."""
    return np.clip(np.round(np.asarray(block, dtype=np.float32) * 32767.0), -32768, 32767).astype(np.int16)
