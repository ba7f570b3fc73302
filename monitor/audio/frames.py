"""What the audio layer hands on: fixed-length frames from a source and the speech segments cut from them.

source -> ``AudioFrame`` -> segmenter -> ``Segment`` -> the live pipeline's worker.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from monitor.model.audio_format import SAMPLE_RATE


@dataclass(frozen=True)
class AudioFrame:
    """A fixed-length block of 16 kHz mono int16 audio.

    ``t_start`` is the session time of the first sample in seconds. It counts
    samples, not wall-clock time, so replay at any speed keeps true times and a
    gap left by dropped frames stays a gap.
    """

    samples: np.ndarray
    t_start: float

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    @property
    def t_end(self) -> float:
        return self.t_start + self.duration


@dataclass(frozen=True)
class Segment:
    """A stretch of speech cut by the segmenter, ready for the model.

    ``audio`` is float32 in [-1, 1] at 16 kHz. ``closed_at`` is the
    ``time.monotonic()`` instant the segmenter closed the segment: latency is
    measured from there to the point being emitted.
    """

    index: int
    t_start: float
    t_end: float
    audio: np.ndarray
    closed_at: float

    @property
    def duration(self) -> float:
        return self.t_end - self.t_start
