"""Reading any audio file soundfile can open into clean 16 kHz mono float32.

Kept apart from the live sources because training, enrolment and evaluation
read files too, and all of them must treat odd inputs the same way: any
sample rate is resampled (soxr), any channel count is averaged to mono,
NaN/inf samples are zeroed and counted, and values are clipped to [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from monitor.model.audio_format import SAMPLE_RATE


class AudioInputError(RuntimeError):
    """An audio input cannot be used; the message says which and why."""


@dataclass
class AudioStats:
    """What was repaired while reading, so a session summary can say so."""

    nonfinite_samples: int = 0
    clipped_samples: int = 0
    source_rate: int = SAMPLE_RATE
    source_channels: int = 1


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


def _open(path: Path) -> Any:
    """An open ``soundfile.SoundFile`` (soundfile ships no type information)."""
    import soundfile as sf

    if not path.exists():
        raise AudioInputError(f"audio file not found: {path}")
    if path.is_dir():
        raise AudioInputError(f"{path} is a folder, not an audio file")
    try:
        handle = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioInputError(
            f"cannot read {path} as audio ({exc}); use a WAV, FLAC or OGG file that soundfile can open"
        ) from exc
    if handle.frames == 0 or handle.samplerate <= 0:
        handle.close()
        raise AudioInputError(f"{path} holds no audio samples")
    if handle.channels < 1:
        handle.close()
        raise AudioInputError(f"{path} has no audio channels")
    return handle


def iter_audio_blocks(path: str | Path, block_seconds: float = 1.0,
                      stats: AudioStats | None = None) -> Iterator[np.ndarray]:
    """Stream a file as 16 kHz mono float32 blocks, resampling on the fly.

    A truncated file yields what could be read, then raises ``AudioInputError``.
    """
    import soundfile as sf
    import soxr

    path = Path(path)
    handle = _open(path)
    stats = stats if stats is not None else AudioStats()
    stats.source_rate, stats.source_channels = handle.samplerate, handle.channels
    resampler = None if handle.samplerate == SAMPLE_RATE else soxr.ResampleStream(
        handle.samplerate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
    block_frames = max(int(handle.samplerate * block_seconds), 1)
    with handle:
        while True:
            try:
                data = handle.read(block_frames, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise AudioInputError(f"{path} is truncated or corrupt after {handle.tell()} frames: {exc}") from exc
            last = len(data) < block_frames
            mono = sanitize(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0], stats)
            if resampler is not None:
                mono = resampler.resample_chunk(mono, last=last)
            if len(mono):
                yield mono
            if last:
                break


def read_audio(path: str | Path, stats: AudioStats | None = None) -> np.ndarray:
    """A whole file as 16 kHz mono float32 (for clips: training, enrolment, evaluation)."""
    blocks = list(iter_audio_blocks(path, block_seconds=10.0, stats=stats))
    audio = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
    if len(audio) == 0:
        raise AudioInputError(f"{path} holds no audio samples")
    return audio


def to_int16(block: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16 PCM (what the VAD and the frames carry)."""
    return np.clip(np.round(np.asarray(block, dtype=np.float32) * 32767.0), -32768, 32767).astype(np.int16)
