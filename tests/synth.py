"""Synthetic speech-like audio for tests: voiced pulse trains through formant filters.

webrtcvad classifies it as speech, so tests can place speech at known times
without shipping any recordings.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

SR = 16_000


def voiced(duration: float, f0: float = 140.0, amplitude: float = 0.5, sr: int = SR, seed: int = 0) -> np.ndarray:
    """A vowel-like sound with syllable-rate amplitude modulation."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(duration * sr)) / sr
    freq = f0 * (1 + 0.1 * np.sin(2 * np.pi * 0.5 * t + rng.uniform(0, 6)))
    phase = np.cumsum(freq) / sr
    x = (np.diff(np.floor(phase), prepend=0) > 0).astype(float)
    for fc, bw in [(700, 130), (1220, 70), (2600, 160)]:
        r = np.exp(-np.pi * bw / sr)
        th = 2 * np.pi * fc / sr
        x = lfilter([1 - r], [1, -2 * r * np.cos(th), r * r], x)
    x *= 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    peak = np.abs(x).max()
    return (x / peak * amplitude if peak > 0 else x).astype(np.float32)


def silence(duration: float, sr: int = SR) -> np.ndarray:
    return np.zeros(int(duration * sr), dtype=np.float32)


def speech_timeline(parts: list[tuple[str, float]], sr: int = SR) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Concatenate ("speech"|"silence", seconds) parts; returns audio and the (start, end) of each speech part."""
    chunks, spans, t = [], [], 0.0
    for i, (kind, dur) in enumerate(parts):
        chunk = voiced(dur, sr=sr, seed=i) if kind == "speech" else silence(dur, sr=sr)
        if kind == "speech":
            spans.append((t, t + dur))
        chunks.append(chunk)
        t += dur
    return np.concatenate(chunks), spans
