"""Voice-activity segmentation with webrtcvad: frames in, speech segments out.

Speech starts when most frames of a short look-back window are voiced (the
window is kept as pre-roll, so onsets are not clipped) and ends after a
hangover of mostly unvoiced frames. Long speech is cut into windows of at most
``max_segment_s`` so a monologue still yields a point every few seconds. Each
segment then passes the speech gate (``monitor.audio.speech_gate``): tones,
hum, music and noise that the VAD let through are counted and dropped, so they
never become points.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from itertools import chain
from pathlib import Path
from typing import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from monitor.model.audio_format import SAMPLE_RATE
from monitor.audio.frames import AudioFrame, Segment
from monitor.audio.sources import FileSource, FrameChunker
from monitor.audio.speech_gate import SpeechGateConfig, judge

log = logging.getLogger(__name__)


@dataclass
class VadConfig:
    """Segmenter settings.

    aggressiveness: webrtcvad's 0 (keeps most audio) .. 3 (strictest about what is speech).
    frame_ms: 10, 20 or 30. start_padding_ms: look-back window that decides an onset and is kept as pre-roll.
    end_padding_ms: hangover of non-speech that ends a segment. trigger_ratio: share of voiced
    (onset) or unvoiced (end) frames in those windows. min_segment_s: shorter segments are dropped.
    max_segment_s: longer speech is cut into windows of this length.
    speech_gate: check every segment with the speech gate and drop those that are not speech.
    """

    aggressiveness: int = 2
    frame_ms: int = 30
    start_padding_ms: int = 300
    end_padding_ms: int = 600
    trigger_ratio: float = 0.75
    min_segment_s: float = 0.5
    max_segment_s: float = 6.0
    #: Drop segments that do not sound like a speaking voice (``monitor.audio.speech_gate``); ``--speech-gate off``.
    speech_gate: bool = True

    def __post_init__(self) -> None:
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"VAD aggressiveness must be 0-3, got {self.aggressiveness}")
        if self.frame_ms not in (10, 20, 30):
            raise ValueError(f"VAD frame length must be 10, 20 or 30 ms, got {self.frame_ms}")
        if self.start_padding_ms < self.frame_ms or self.end_padding_ms < self.frame_ms:
            raise ValueError("VAD paddings must be at least one frame long")
        if not 0.0 < self.trigger_ratio <= 1.0:
            raise ValueError("VAD trigger ratio must be in (0, 1]")
        if self.min_segment_s < 0 or self.max_segment_s <= 0 or self.min_segment_s > self.max_segment_s:
            raise ValueError("need 0 <= min segment length <= max segment length, and max > 0")

    @property
    def frame_samples(self) -> int:
        return SAMPLE_RATE * self.frame_ms // 1000


#: Where to cut a closed segment, in seconds from its start (``SpeakerAttributor.cut_points``: where the voice
#: changes from one enrolled speaker to the other).
Splitter = Callable[[np.ndarray], Sequence[float]]


class VadSegmenter:
    """Stateful: feed frames with ``push``; call ``flush`` at the end of the stream.

    splitter: cuts each closed segment into pieces (each its own segment and index); None keeps them whole.
    """

    def __init__(self, config: VadConfig | None = None, splitter: Splitter | None = None):
        import webrtcvad

        self.config = config or VadConfig()
        self._vad = webrtcvad.Vad(self.config.aggressiveness)
        self._start_frames = max(self.config.start_padding_ms // self.config.frame_ms, 1)
        self._end_frames = max(self.config.end_padding_ms // self.config.frame_ms, 1)
        self._start_window: deque[tuple[AudioFrame, bool]] = deque(maxlen=self._start_frames)
        self._end_window: deque[bool] = deque(maxlen=self._end_frames)
        self._current: list[AudioFrame] = []
        self._in_speech = False
        self._expected_t: float | None = None
        self._next_index = 0
        self.speech_seconds = 0.0
        self.discarded_short = 0
        self.gate = SpeechGateConfig() if self.config.speech_gate else None
        #: Segments the speech gate dropped, and their length.
        self.discarded_nonspeech = 0
        self.nonspeech_seconds = 0.0
        self.splitter = splitter
        #: Cuts the splitter made (speaker changes inside a segment).
        self.turn_cuts = 0

    @property
    def speech_active(self) -> bool:
        return self._in_speech

    def is_speech(self, frame: AudioFrame) -> bool:
        if len(frame.samples) != self.config.frame_samples:
            raise ValueError(f"VAD needs {self.config.frame_samples}-sample frames, got {len(frame.samples)}")
        return bool(self._vad.is_speech(np.ascontiguousarray(frame.samples, dtype=np.int16).tobytes(), SAMPLE_RATE))

    def push(self, frame: AudioFrame) -> list[Segment]:
        out: list[Segment] = []
        if self._expected_t is not None and abs(frame.t_start - self._expected_t) > 1e-6:
            out += self.flush()  # a gap (dropped audio): never stitch across it
        self._expected_t = frame.t_end
        voiced = self.is_speech(frame)
        if not self._in_speech:
            self._start_window.append((frame, voiced))
            voiced_count = sum(v for _, v in self._start_window)
            if voiced_count >= self.config.trigger_ratio * self._start_frames:
                self._in_speech = True
                self._current = [f for f, _ in self._start_window]
                self._start_window.clear()
                self._end_window.clear()
            return out
        if self._current and frame.t_end - self._current[0].t_start > self.config.max_segment_s + 1e-9:
            out += self._emit()  # the window is full: still in speech, this frame opens the next one
        self._current.append(frame)
        self._end_window.append(voiced)
        unvoiced = len(self._end_window) - sum(self._end_window)
        if len(self._end_window) == self._end_frames and unvoiced >= self.config.trigger_ratio * self._end_frames:
            out += self._emit()
            self._in_speech = False
            self._end_window.clear()
        return out

    def flush(self) -> list[Segment]:
        """Close any open segment (end of input, pause, or a gap in the audio)."""
        out = self._emit() if self._current else []
        self._in_speech = False
        self._start_window.clear()
        self._end_window.clear()
        self._expected_t = None
        return out

    def _emit(self) -> list[Segment]:
        closed_at = time.monotonic()  # latency counts from here, the gate's time included
        frames, self._current = self._current, []
        t_start, t_end = frames[0].t_start, frames[-1].t_end
        if t_end - t_start < self.config.min_segment_s - 1e-9:
            self.discarded_short += 1
            return []
        audio = np.concatenate([f.samples for f in frames]).astype(np.float32) / 32768.0
        if self.gate is not None:
            verdict = judge(audio, self.gate)
            if not verdict.speech:
                self.discarded_nonspeech += 1
                self.nonspeech_seconds += t_end - t_start
                n = self.discarded_nonspeech
                log.log(logging.INFO if n <= 3 or n % 100 == 0 else logging.DEBUG,
                        "%.1f-%.1f s is not speech (%s); skipped (%d so far)", t_start, t_end, verdict.reason, n)
                return []
        self.speech_seconds += t_end - t_start
        cuts = self._cuts(audio)
        self.turn_cuts += len(cuts)
        edges = [0, *cuts, len(audio)]
        out = []
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            end = t_end if b == len(audio) else t_start + b / SAMPLE_RATE
            out.append(Segment(index=self._next_index, t_start=t_start + a / SAMPLE_RATE, t_end=end, audio=audio[a:b],
                               closed_at=closed_at))
            self._next_index += 1
        return out

    def _cuts(self, audio: np.ndarray) -> list[int]:
        """The splitter's cuts as sample offsets inside the segment; a failing splitter keeps it whole."""
        if self.splitter is None:
            return []
        try:
            seconds = self.splitter(audio)
        except Exception as exc:  # noqa: BLE001 - a cut is an improvement: never lose the segment over one
            log.warning("could not search the segment for speaker changes (kept whole): %s", exc)
            return []
        return sorted({n for n in (round(float(c) * SAMPLE_RATE) for c in seconds) if 0 < n < len(audio)})


def segment_frames(frames: Iterable[AudioFrame], config: VadConfig | None = None,
                   splitter: Splitter | None = None) -> list[Segment]:
    """Every speech segment of a finite stream of frames, cut exactly as a live session cuts them."""
    segmenter = VadSegmenter(config or VadConfig(), splitter)
    segments: list[Segment] = []
    for frame in frames:
        segments += segmenter.push(frame)
    return segments + segmenter.flush()


def segment_file(path: str | Path, config: VadConfig | None = None) -> list[Segment]:
    """A whole file's speech segments (enrolment, evaluation, benchmarks)."""
    config = config or VadConfig()
    return segment_frames(FileSource(path, frame_ms=config.frame_ms, realtime=False).frames(), config)


def segment_signal(signal: np.ndarray, config: VadConfig | None = None, splitter: Splitter | None = None
                   ) -> list[Segment]:
    """A 16 kHz mono float32 signal's speech segments, as if it were replayed from a file."""
    config = config or VadConfig()
    chunker = FrameChunker(config.frame_samples)
    return segment_frames(chain(chunker.push(np.asarray(signal, dtype=np.float32)), chunker.flush()), config,
                          splitter)
