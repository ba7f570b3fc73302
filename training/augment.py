"""Waveform augmentation: additive noise, gain, speed and synthetic reverberation.

Each augmentation is deterministic given a seed, so a cached feature of an
augmented clip can be recomputed exactly. ``Augmentation.from_spec("noise+gain")``
parses the short names used on the command line; :data:`AUGMENTATIONS` lists them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000


def _rng(seed: int, key: str) -> np.random.Generator:
    digest = hashlib.sha1(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def add_noise(wave: np.ndarray, rng: np.random.Generator, snr_db: tuple[float, float] = (10.0, 30.0)) -> np.ndarray:
    """White or pink noise at a random SNR relative to the clip's active-speech power."""
    snr = rng.uniform(*snr_db)
    power = np.mean(wave.astype(np.float64) ** 2) + 1e-12
    noise = rng.standard_normal(len(wave))
    if rng.random() < 0.5:  # pink: 1/f spectrum
        spec = np.fft.rfft(noise)
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1.0
        noise = np.fft.irfft(spec / np.sqrt(f), n=len(wave))
    noise = noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)
    noise *= np.sqrt(power / 10 ** (snr / 10))
    return np.asarray(wave + noise, dtype=np.float32)


def change_gain(wave: np.ndarray, rng: np.random.Generator, db: tuple[float, float] = (-12.0, 6.0)) -> np.ndarray:
    out = wave * 10 ** (rng.uniform(*db) / 20)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def change_speed(wave: np.ndarray, rng: np.random.Generator, factors: tuple[float, float] = (0.9, 1.1)) -> np.ndarray:
    """Speed perturbation (tempo and pitch together, as in Kaldi's speed perturbation)."""
    import soxr

    factor = rng.uniform(*factors)
    return np.asarray(soxr.resample(wave.astype(np.float32), SAMPLE_RATE * factor, SAMPLE_RATE), dtype=np.float32)


def add_reverb(wave: np.ndarray, rng: np.random.Generator, rt60: tuple[float, float] = (0.2, 0.8),
               wet: tuple[float, float] = (0.2, 0.6)) -> np.ndarray:
    """Convolve with a synthetic room impulse response (exponentially decaying noise)."""
    from scipy.signal import fftconvolve

    t60 = rng.uniform(*rt60)
    n = int(t60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / t60)
    ir[0] = 1.0
    ir /= np.sqrt(np.sum(ir ** 2))
    mix = rng.uniform(*wet)
    wet_sig = fftconvolve(wave, ir)[: len(wave)]
    out = (1 - mix) * wave + mix * wet_sig
    peak = np.max(np.abs(out)) + 1e-9
    if peak > 1.0:
        out = out / peak
    return np.asarray(out, dtype=np.float32)


AUGMENTATIONS = {"noise": add_noise, "gain": change_gain, "speed": change_speed, "reverb": add_reverb}


@dataclass(frozen=True)
class Augmentation:
    """A chain of named augmentations applied in order; ``name`` is its cache id."""

    steps: tuple[str, ...]
    seed: int = 0

    @classmethod
    def from_spec(cls, spec: str, seed: int = 0) -> "Augmentation":
        steps = tuple(s.strip() for s in spec.replace(",", "+").split("+") if s.strip())
        for s in steps:
            if s not in AUGMENTATIONS:
                raise ValueError(f"unknown augmentation {s!r}; known: {sorted(AUGMENTATIONS)}")
        return cls(steps, seed)

    @property
    def name(self) -> str:
        return "+".join(self.steps) + f"@{self.seed}"

    def __call__(self, wave: np.ndarray, key: str) -> np.ndarray:
        rng = _rng(self.seed, key + "|" + self.name)
        out = np.asarray(wave, dtype=np.float32)
        for step in self.steps:
            out = AUGMENTATIONS[step](out, rng)
        return out
