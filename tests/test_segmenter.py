"""VAD segmentation: segment times follow the speech, long speech is windowed, short blips dropped."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from monitor.audio.io import to_int16
from monitor.model.audio_format import SAMPLE_RATE
from monitor.audio.frames import AudioFrame
from monitor.audio.segmenter import VadConfig, VadSegmenter
from tests.synth import speech_timeline


def frames_of(audio: np.ndarray, frame_ms: int = 30, t0: float = 0.0):
    n = SAMPLE_RATE * frame_ms // 1000
    for i in range(0, len(audio) - n + 1, n):
        yield AudioFrame(to_int16(audio[i : i + n]), t0 + i / SAMPLE_RATE)


def segment(audio, config=None, t0=0.0):
    seg = VadSegmenter(config or VadConfig())
    out = []
    for frame in frames_of(audio, seg.config.frame_ms, t0):
        out += seg.push(frame)
    return out + seg.flush(), seg


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_segments_follow_speech(frame_ms):
    audio, spans = speech_timeline([("silence", 1.0), ("speech", 2.0), ("silence", 1.5), ("speech", 1.2),
                                    ("silence", 1.0)])
    config = VadConfig(frame_ms=frame_ms)
    segments, seg = segment(audio, config)
    assert len(segments) == 2
    for s, (start, end) in zip(segments, spans, strict=True):
        # onset decided within the look-back window, kept as pre-roll; end after the hangover
        assert start - config.start_padding_ms / 1000 - 0.05 <= s.t_start <= start + 0.1
        assert end <= s.t_end <= end + config.end_padding_ms / 1000 + 0.1
        assert len(s.audio) == pytest.approx((s.t_end - s.t_start) * SAMPLE_RATE, abs=1)
        assert s.audio.dtype == np.float32
    assert [s.index for s in segments] == [0, 1]
    assert seg.speech_seconds == pytest.approx(sum(s.duration for s in segments))


def test_long_speech_is_cut_into_windows():
    audio, _ = speech_timeline([("silence", 0.5), ("speech", 14.0), ("silence", 1.0)])
    segments, _ = segment(audio, VadConfig(max_segment_s=4.0))
    assert len(segments) >= 4
    assert all(s.duration <= 4.0 + 1e-6 for s in segments)
    # the windows tile the speech without gaps or overlaps
    for a, b in pairwise(segments):
        assert b.t_start == pytest.approx(a.t_end, abs=1e-6)


def test_short_blips_are_dropped():
    audio, _ = speech_timeline([("silence", 1.0), ("speech", 0.25), ("silence", 1.5)])
    segments, seg = segment(audio, VadConfig(min_segment_s=1.0, end_padding_ms=300, start_padding_ms=150))
    assert segments == []
    assert seg.discarded_short == 1


def test_silence_yields_nothing():
    segments, seg = segment(np.zeros(SAMPLE_RATE * 5, dtype=np.float32))
    assert segments == [] and seg.speech_seconds == 0


def test_session_time_offsets_are_kept():
    audio, spans = speech_timeline([("silence", 0.6), ("speech", 1.5), ("silence", 1.0)])
    segments, _ = segment(audio, t0=100.0)
    assert len(segments) == 1 and 100.0 < segments[0].t_start < 100.0 + spans[0][0] + 0.2


def test_gap_in_frames_closes_the_segment():
    audio, _ = speech_timeline([("speech", 2.0)])
    seg = VadSegmenter(VadConfig())
    out = []
    frames = list(frames_of(audio))
    for f in frames[:40]:
        out += seg.push(f)
    for f in frames[40:]:  # the same audio 10 s later: dropped frames in between
        out += seg.push(AudioFrame(f.samples, f.t_start + 10.0))
    out += seg.flush()
    assert len(out) == 2
    assert out[0].t_end <= 1.3 and out[1].t_start >= 10.0


@pytest.mark.parametrize("bad", [dict(aggressiveness=4), dict(frame_ms=25), dict(min_segment_s=7, max_segment_s=6)])
def test_bad_config_is_refused(bad):
    with pytest.raises(ValueError):
        VadConfig(**bad)


def test_wrong_frame_length_is_refused():
    seg = VadSegmenter(VadConfig(frame_ms=30))
    with pytest.raises(ValueError, match="480-sample"):
        seg.push(AudioFrame(np.zeros(320, dtype=np.int16), 0.0))


def test_a_splitter_cuts_a_segment_into_consecutive_segments_that_tile_it():
    """Speaker changes: the splitter's cuts become segment boundaries; every piece gets the next index."""
    audio, _ = speech_timeline([("silence", 0.5), ("speech", 3.0), ("silence", 1.0), ("speech", 5.0),
                                ("silence", 1.0)])
    whole, _ = segment(audio)
    seen: list[float] = []

    def splitter(wave: np.ndarray) -> list[float]:
        seconds = len(wave) / SAMPLE_RATE
        seen.append(seconds)
        return [1.6, 3.2] if seconds > 4.0 else []  # cut only the long one, twice

    seg = VadSegmenter(VadConfig(), splitter)
    cut = [s for frame in frames_of(audio) for s in seg.push(frame)] + seg.flush()
    assert len(whole) == 2 and len(cut) == 4 and seg.turn_cuts == 2
    assert [s.index for s in cut] == [0, 1, 2, 3]
    assert seen == pytest.approx([s.duration for s in whole], abs=1e-6)  # the splitter sees each closed segment
    assert (cut[0].t_start, cut[0].t_end) == (whole[0].t_start, whole[0].t_end)  # the short one, whole
    long_pieces = cut[1:]
    assert long_pieces[0].t_start == whole[1].t_start and long_pieces[-1].t_end == whole[1].t_end
    for a, b in pairwise(long_pieces):
        assert b.t_start == pytest.approx(a.t_end, abs=1e-9)
    assert [round(p.t_start - whole[1].t_start, 6) for p in long_pieces] == [0.0, 1.6, 3.2]
    np.testing.assert_array_equal(np.concatenate([p.audio for p in long_pieces]), whole[1].audio)
    assert seg.speech_seconds == pytest.approx(sum(s.duration for s in whole))


def test_a_failing_or_careless_splitter_never_loses_speech():
    audio, _ = speech_timeline([("silence", 0.5), ("speech", 5.0), ("silence", 1.0)])
    (whole,), _ = segment(audio)

    def broken(wave):
        raise RuntimeError("encoder broke")

    for splitter, pieces in ((broken, 1), (lambda w: [-1.0, 2.0, 2.0, 99.0], 2)):  # out of range, repeated
        seg = VadSegmenter(VadConfig(), splitter)
        cut = [s for frame in frames_of(audio) for s in seg.push(frame)] + seg.flush()
        assert len(cut) == pieces
        np.testing.assert_array_equal(np.concatenate([p.audio for p in cut]), whole.audio)
