"""The speech gate: a second test, after the VAD, that a segment sounds like a speaking voice.

webrtcvad answers "is there something voice-band and loud here", so a tone,
mains hum, a square wave, music or a burst of noise can come out of it as a
"speech" segment, and the model then places it on the circumplex with high
confidence (a full-scale square wave read as 0.95 "angry"). The gate looks at
three things a speaking voice has and those sounds lack (docs/protocol.md,
"What counts as speech", gives the measurements):

* **a pitch that keeps moving.** Voiced speech glides: its fundamental changes
  from one 10 ms frame to the next by a few hundredths to tenths of a
  semitone (jitter and intonation). Tones, hum, square and sawtooth waves and
  instrument notes hold their pitch. A segment is rejected when most of its
  voiced frames sit in 100 ms stretches that stay within 0.2 semitone
  (``max_steady_share``), or when most frame-to-frame changes are below 0.03
  semitone (``max_flat_share``).
* **a voice in tonal sound.** A sound that is almost purely tonal (spectral
  flatness below ``tonal_flatness``: chords, hum below the voice range) must
  show a periodic voice in at least half of its frames.
* **periodicity in noise-like sound.** A segment with (almost) no voiced frames
  that is spectrally flat (white, pink or clipped noise) or of steady loudness
  is noise, not unvoiced speech.

Pitch is found with the YIN method (de Cheveigné and Kawahara, 2002): the
cumulative mean normalised difference function over lags for 60-500 Hz,
computed with FFTs over 25 ms windows every 10 ms, with parabolic
interpolation of the dip. Everything is numpy; a 6 s segment takes a few
milliseconds. ``benchmarks/bench_speech_gate.py`` measures what the gate keeps
of real speech and rejects of synthetic non-speech.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import fft

from monitor.model.audio_format import SAMPLE_RATE

HOP = SAMPLE_RATE // 100  # 10 ms
WINDOW = SAMPLE_RATE * 25 // 1000  # the difference function's integration window: 25 ms
FMIN, FMAX = 60.0, 500.0
FLATNESS_FFT = 512


@dataclass(frozen=True)
class SpeechGateConfig:
    """Thresholds of the gate (the defaults are what the benchmark measured; see the module docstring).

    active_db: frames within this many dB of the segment's loudest frame are judged (the rest is pause).
    aperiodicity: a frame is voiced when YIN's normalised difference dips below this at its pitch, and a
        neighbouring frame is voiced at a pitch within a semitone.
    min_voiced_frames: fewer voiced frames than this are too little evidence for the pitch tests.
    max_steady_share / steady_frames / steady_semitones: reject when more than this share of voiced frames lie
        in runs of ``steady_frames`` frames whose pitch stays within ``steady_semitones``.
    max_flat_share / flat_semitones: reject when more than this share of frame-to-frame pitch changes are smaller
        than ``flat_semitones``.
    tonal_flatness / min_voiced_share_tonal: a segment whose median spectral flatness is below
        ``tonal_flatness`` must be voiced in at least ``min_voiced_share_tonal`` of its frames.
    noise_voiced_share / noise_flatness / noise_level_std_db: a segment voiced in less than
        ``noise_voiced_share`` of its frames is noise when its flatness exceeds ``noise_flatness`` or its
        loudness varies less than ``noise_level_std_db`` (standard deviation over frames).
    """

    active_db: float = 35.0
    aperiodicity: float = 0.25
    min_voiced_frames: int = 20
    max_steady_share: float = 0.6
    steady_frames: int = 11
    steady_semitones: float = 0.2
    max_flat_share: float = 0.7
    flat_semitones: float = 0.03
    tonal_flatness: float = 3e-4
    min_voiced_share_tonal: float = 0.5
    noise_voiced_share: float = 0.1
    noise_flatness: float = 0.3
    noise_level_std_db: float = 2.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateVerdict:
    """What the gate measured on one segment and what it decided; ``reason`` is None for speech."""

    speech: bool
    reason: str | None
    voiced_share: float
    steady_share: float
    flat_share: float
    flatness: float
    level_std_db: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _frames(x: np.ndarray, length: int, hop: int) -> np.ndarray:
    if len(x) < length:
        x = np.pad(x, (0, length - len(x)))
    view: np.ndarray = sliding_window_view(x, length)[::hop]
    return view


def pitch_track(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per 10 ms frame: (f0 in Hz, YIN aperiodicity at that f0, level in dB). 16 kHz mono float input."""
    x = np.asarray(audio, dtype=np.float64)
    tmin, tmax = int(SAMPLE_RATE / FMAX), int(SAMPLE_RATE / FMIN)
    length = WINDOW + tmax + 1
    frames = _frames(x, length, HOP)
    # r(t) = sum_{j<W} x_j x_{j+t} for t <= tmax + 1 only: j + t < length, so an FFT of ``length`` points does not
    # wrap around into those lags.
    nfft = fft.next_fast_len(length, real=True)
    spec = fft.rfft(frames, nfft, axis=1)
    head = fft.rfft(frames[:, :WINDOW], nfft, axis=1)
    corr = fft.irfft(np.conj(head) * spec, nfft, axis=1)[:, : tmax + 2]
    energy = np.concatenate([np.zeros((len(frames), 1)), np.cumsum(frames ** 2, axis=1)], axis=1)
    lags = np.arange(tmax + 2)
    e0 = energy[:, WINDOW]
    diff = e0[:, None] + (energy[:, lags + WINDOW] - energy[:, lags]) - 2.0 * corr  # d(t)
    mean = np.cumsum(diff[:, 1:], axis=1) / np.arange(1, tmax + 2)
    cmnd = np.ones_like(diff)
    cmnd[:, 1:] = diff[:, 1:] / np.maximum(mean, 1e-12)  # cumulative mean normalised difference
    band = cmnd[:, tmin: tmax + 1]
    rows = np.arange(len(band))
    below = band < 0.2
    k = np.where(below.any(axis=1), below.argmax(axis=1), band.argmin(axis=1))  # first dip, else the deepest
    # Walk down to the bottom of that dip: the first lag from k on after which the function rises again.
    rising = band[:, 1:] >= band[:, :-1]
    rising &= np.arange(band.shape[1] - 1)[None, :] >= k[:, None]
    k = np.where(rising.any(axis=1), rising.argmax(axis=1), band.shape[1] - 1)
    km = np.clip(k, 1, band.shape[1] - 2)
    a, b, c = band[rows, km - 1], band[rows, km], band[rows, km + 1]
    den = a - 2.0 * b + c
    safe = np.abs(den) > 1e-12
    shift = np.clip(np.where(safe, 0.5 * (a - c) / np.where(safe, den, 1.0), 0.0), -1.0, 1.0)
    f0 = SAMPLE_RATE / (tmin + km + shift)
    level = 10.0 * np.log10(e0 / WINDOW + 1e-12)
    return f0, band[rows, k], level


def spectral_flatness(audio: np.ndarray) -> np.ndarray:
    """Per 10 ms frame: geometric over arithmetic mean of the power spectrum, 125 Hz to 6.2 kHz (0 tonal, 1 noise)."""
    frames = _frames(np.asarray(audio, dtype=np.float64), FLATNESS_FFT, HOP) * np.hanning(FLATNESS_FFT)
    power = np.abs(fft.rfft(frames, axis=1))[:, 4:200] ** 2 + 1e-12
    flatness: np.ndarray = np.exp(np.mean(np.log(power), axis=1)) / np.mean(power, axis=1)
    return flatness


def judge(audio: np.ndarray, config: SpeechGateConfig | None = None) -> GateVerdict:
    """Whether a 16 kHz mono segment sounds like a speaking voice, with the measurements behind the answer."""
    cfg = config or SpeechGateConfig()
    f0, aperiodicity, level = pitch_track(audio)
    flat = spectral_flatness(audio)
    n = min(len(f0), len(flat))
    f0, aperiodicity, level, flat = f0[:n], aperiodicity[:n], level[:n], flat[:n]
    active = level > max(float(level.max()) - cfg.active_db, -75.0) if n else np.zeros(0, dtype=bool)
    if not active.any():
        return GateVerdict(False, "silence", 0.0, 0.0, 0.0, 1.0, 0.0)
    semitones = 12.0 * np.log2(f0 / 100.0)
    periodic = active & (aperiodicity < cfg.aperiodicity)
    step = np.abs(np.diff(semitones))
    linked = periodic[1:] & periodic[:-1] & (step < 1.0)  # consecutive voiced frames on one pitch contour
    voiced = np.zeros(n, dtype=bool)
    voiced[1:] |= linked
    voiced[:-1] |= linked
    n_voiced = int(voiced.sum())
    voiced_share = n_voiced / int(active.sum())
    flatness = float(np.median(flat[active]))
    level_std = float(np.std(level[active]))
    steady_share = flat_share = 0.0
    if n_voiced >= cfg.min_voiced_frames:
        flat_share = float(np.mean(step[linked] < cfg.flat_semitones)) if linked.any() else 0.0
        if n >= cfg.steady_frames:
            win_voiced = sliding_window_view(voiced, cfg.steady_frames).all(axis=1)
            win_range = np.ptp(sliding_window_view(semitones, cfg.steady_frames), axis=1)
            starts = np.flatnonzero(win_voiced & (win_range < cfg.steady_semitones))
            steady = np.zeros(n, dtype=bool)
            for offset in range(cfg.steady_frames):
                steady[starts + offset] = True
            steady_share = int((steady & voiced).sum()) / n_voiced

    def verdict(reason: str | None) -> GateVerdict:
        return GateVerdict(reason is None, reason, round(voiced_share, 4), round(steady_share, 4),
                           round(flat_share, 4), round(flatness, 6), round(level_std, 3))

    if n_voiced >= cfg.min_voiced_frames and (steady_share > cfg.max_steady_share or flat_share > cfg.max_flat_share):
        return verdict("steady pitch (a tone, hum, a synthesiser or instrument notes)")
    if flatness < cfg.tonal_flatness and (n_voiced < cfg.min_voiced_frames
                                          or voiced_share < cfg.min_voiced_share_tonal):
        return verdict("tonal sound without a speaking voice (chords, hum)")
    if voiced_share < cfg.noise_voiced_share and (flatness > cfg.noise_flatness
                                                  or level_std < cfg.noise_level_std_db):
        return verdict("noise without a voice")
    return verdict(None)
