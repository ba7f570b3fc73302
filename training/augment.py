"""Rooms and microphones the corpora never had: waveform augmentation with audiomentations.

The acted corpora are clean studio recordings; a therapy room is not. Each
named step simulates one thing a room or a microphone does to speech, with
well-kept implementations (``audiomentations``; rooms by ``pyroomacoustics``,
the MP3 codec by ``fast-mp3-augment``):

=========== ===============================================================
``gain``     level change, -12..+12 dB (clipping happens later, in int16 frames)
``noise``    additive Gaussian noise at 5-30 dB SNR
``reverb``   a simulated shoebox room, RT60 0.15-0.8 s, microphone 0.15-0.35 m away
             (level kept: loudness is ``gain``'s job)
``telephone`` band-pass ~300-3400 Hz
``lowpass``  a cheap microphone's or codec's top end, 2.5-5 kHz
``resample`` a round trip through 8, 11.025 or 12 kHz
``codec``    MP3 at 16-64 kbit/s
``speed``    tempo and pitch together, x0.9-1.1 (Kaldi-style speed perturbation)
``room``     the chain used for training: ``reverb`` (p 0.8), ``noise`` (p 0.8), one of
             ``telephone``/``lowpass``/``resample`` (p 0.6), ``codec`` (p 0.3), ``gain``
=========== ===============================================================

Every augmentation is deterministic given its seed and the item's key, so a
cached feature of an augmented segment can be recomputed exactly.
``Augmentation.from_spec("room")`` parses the names used on the command line.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from monitor.model.audio_format import SAMPLE_RATE

#: A step: (wave, rng) -> wave; the global ``random``/``numpy.random`` state is seeded before it runs.
Step = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _rng(seed: int, key: str) -> np.random.Generator:
    digest = hashlib.sha1(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _apply(transform: Any, wave: np.ndarray) -> np.ndarray:
    out = transform(samples=np.ascontiguousarray(wave, dtype=np.float32), sample_rate=SAMPLE_RATE)
    return _same_length(np.asarray(out, dtype=np.float32), len(wave))


def _same_length(wave: np.ndarray, n: int) -> np.ndarray:
    """Cut or zero-pad to ``n`` samples (a room's tail, an MP3 codec's delay)."""
    if len(wave) == n:
        return wave
    out = np.zeros(n, dtype=np.float32)
    out[: min(n, len(wave))] = wave[:n]
    return out


def _rms(wave: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(wave, dtype=np.float64) ** 2)) + 1e-12)


def change_gain(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    import audiomentations as A

    return _apply(A.Gain(min_gain_db=-12.0, max_gain_db=12.0, p=1.0), wave)


def add_noise(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    import audiomentations as A

    return _apply(A.AddGaussianSNR(min_snr_db=5.0, max_snr_db=30.0, p=1.0), wave)


def add_reverb(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    import audiomentations as A

    room = A.RoomSimulator(min_target_rt60=0.15, max_target_rt60=0.8, calculation_mode="rt60",
                           use_ray_tracing=False, max_order=10, leave_length_unchanged=True,
                           min_mic_distance=0.15, max_mic_distance=0.35, p=1.0)
    out = _apply(room, wave)
    return np.asarray(out * (_rms(wave) / _rms(out)), dtype=np.float32)


def telephone(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    import audiomentations as A

    band = A.BandPassFilter(min_center_freq=800.0, max_center_freq=1600.0, min_bandwidth_fraction=1.2,
                            max_bandwidth_fraction=1.9, min_rolloff=12, max_rolloff=24, p=1.0)
    return _apply(band, wave)


def lowpass(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    import audiomentations as A

    return _apply(A.LowPassFilter(min_cutoff_freq=2500.0, max_cutoff_freq=5000.0, p=1.0), wave)


def resample(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    import soxr

    rate = float(rng.choice([8000.0, 11025.0, 12000.0]))
    back = soxr.resample(soxr.resample(np.asarray(wave, dtype=np.float32), SAMPLE_RATE, rate), rate, SAMPLE_RATE)
    return _same_length(np.asarray(back, dtype=np.float32), len(wave))


def codec(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    import audiomentations as A

    return _apply(A.Mp3Compression(min_bitrate=16, max_bitrate=64, backend="fast-mp3-augment", p=1.0), wave)


def change_speed(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Speed perturbation: the length changes with the tempo, as it would for a faster talker."""
    import soxr

    factor = float(rng.uniform(0.9, 1.1))
    return np.asarray(soxr.resample(np.asarray(wave, dtype=np.float32), SAMPLE_RATE * factor, SAMPLE_RATE),
                      dtype=np.float32)


def room(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The training chain: a room, its noise, a channel, sometimes a codec, and a level."""
    out = add_reverb(wave, rng) if rng.random() < 0.8 else wave
    out = add_noise(out, rng) if rng.random() < 0.8 else out
    if rng.random() < 0.6:
        channel: Step = (telephone, lowpass, resample)[int(rng.integers(3))]
        out = channel(out, rng)
    out = codec(out, rng) if rng.random() < 0.3 else out
    return change_gain(out, rng)


AUGMENTATIONS: dict[str, Step] = {
    "gain": change_gain, "noise": add_noise, "reverb": add_reverb, "telephone": telephone, "lowpass": lowpass,
    "resample": resample, "codec": codec, "speed": change_speed, "room": room,
}


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
        draw = int(rng.integers(2**31))
        random.seed(draw)  # audiomentations draws from the global generators: seed them for this item
        np.random.seed(draw)
        out = np.asarray(wave, dtype=np.float32)
        for step in self.steps:
            out = AUGMENTATIONS[step](out, rng)
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
