"""The wired pipeline with a stand-in model: times, controls, failures and shutdown."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import soundfile as sf

from monitor.model.audio_format import SAMPLE_RATE
from monitor.live.heatmap import HeatmapConfig
from monitor.live.pipeline import MonitorConfig, MonitorPipeline
from monitor.live.projection import Projector
from monitor.audio.segmenter import VadConfig
from monitor.audio.sources import FileSource
from tests.synth import speech_timeline

LABELS = ("neutral", "happy", "sad")


class LoudnessModel:
    """Embedding = loudness; the 'reducer' below turns it into a point, so outputs are predictable."""

    def __init__(self) -> None:
        self.calls = 0

    def embed_waveforms(self, waves, baseline=None):
        self.calls += 1
        emb = np.stack([np.full(100, float(np.sqrt(np.mean(w ** 2))), dtype=np.float32) for w in waves])
        return emb, np.tile(np.array([0.6, 0.3, 0.1], dtype=np.float32), (len(waves), 1))


class DiagonalReducer:
    def transform(self, X, method="fast"):
        return np.column_stack([X[:, 0], -X[:, 0]])


class ListSink:
    def __init__(self, fail: bool = False):
        self.points, self.marks, self.statuses, self.fail = [], [], [], fail
        self.started = self.closed = False

    def start(self, session, heatmap):
        self.started, self.heatmap = True, heatmap

    def point(self, point):
        if self.fail:
            raise OSError("disk full")
        self.points.append(point)

    def mark(self, mark):
        self.marks.append(mark)

    def status(self, status):
        self.statuses.append(status)

    def close(self):
        self.closed = True


def replay_file(tmp_path, parts, name="x.wav"):
    audio, spans = speech_timeline(parts)
    path = tmp_path / name
    sf.write(str(path), audio, SAMPLE_RATE)
    return path, spans


def make_pipeline(path, sinks, realtime=False, **config):
    cfg = MonitorConfig(vad=VadConfig(**config), heatmap=HeatmapConfig(smoothing_sigma=0), status_interval_s=0.05)
    return MonitorPipeline(FileSource(path, realtime=realtime), LoudnessModel(), Projector(DiagonalReducer(), LABELS),
                           sinks=sinks, config=cfg)


def test_points_follow_the_speech(tmp_path):
    path, spans = replay_file(tmp_path, [("silence", 1.0), ("speech", 1.5), ("silence", 1.2), ("speech", 2.0),
                                         ("silence", 1.0)])
    sink = ListSink()
    summary = make_pipeline(path, [sink]).run()
    assert sink.started and sink.closed
    assert [p.index for p in sink.points] == [0, 1]
    for point, (start, end) in zip(sink.points, spans, strict=True):
        assert start - 0.35 <= point.t_start <= start + 0.1
        assert end <= point.t_end <= end + 0.7
        assert point.valence == pytest.approx(-point.arousal) and point.valence > 0
        assert point.confidence == pytest.approx(0.6) and list(point.probabilities) == ["neutral", "happy", "sad"]
        assert point.latency_ms >= 0
    assert summary.points == summary.segments == 2
    assert summary.speech_seconds == pytest.approx(sum(p.duration for p in sink.points), abs=1e-3)
    assert summary.audio_seconds == pytest.approx(6.7, abs=0.05)
    assert summary.latency_p50_ms is not None and summary.error is None
    assert sink.heatmap.snapshot().points == 2
    assert sink.statuses and sink.statuses[-1].points == 2


def test_silence_gives_a_clean_empty_session(tmp_path):
    path, _ = replay_file(tmp_path, [("silence", 3.0)])
    sink = ListSink()
    summary = make_pipeline(path, [sink]).run()
    assert sink.points == [] and summary.points == 0 and summary.segments == 0
    assert summary.latency_p50_ms is None and summary.error is None
    assert "0 points" in summary.format()


def test_a_failing_output_does_not_stop_the_others(tmp_path):
    path, _ = replay_file(tmp_path, [("speech", 1.0), ("silence", 1.0), ("speech", 1.0), ("silence", 1.0)])
    good, bad = ListSink(), ListSink(fail=True)
    summary = make_pipeline(path, [bad, good]).run()
    assert len(good.points) == 2 and summary.points == 2


def test_pause_resume_and_marks(tmp_path):
    parts = [("speech", 1.0), ("silence", 1.0)] * 4
    path, _ = replay_file(tmp_path, parts)
    sink = ListSink()
    pipeline = make_pipeline(path, [sink], realtime=True)

    def therapist():
        time.sleep(2.2)
        pipeline.pause()
        pipeline.add_mark("patient talks about work")
        time.sleep(2.0)
        pipeline.resume()

    helper = threading.Thread(target=therapist)
    helper.start()
    summary = pipeline.run()
    helper.join()
    times = [p.t_start for p in sink.points]
    assert not any(2.3 < t < 4.1 for t in times), times  # nothing analysed while paused
    assert any(t < 2.0 for t in times) and any(t > 4.0 for t in times)
    assert len(sink.marks) == 1 and sink.marks[0].text == "patient talks about work"
    assert 2.0 <= sink.marks[0].t <= 2.6
    assert summary.points == len(sink.points)


def test_stop_drains_and_flushes(tmp_path):
    path, _ = replay_file(tmp_path, [("speech", 1.0), ("silence", 0.8)] * 10)
    sink = ListSink()
    pipeline = make_pipeline(path, [sink], realtime=True)
    threading.Timer(3.0, pipeline.stop).start()
    started = time.monotonic()
    summary = pipeline.run()
    assert time.monotonic() - started < 6.0
    assert sink.closed and 1 <= len(sink.points) <= 3
    assert summary.points == len(sink.points) == summary.segments
    assert summary.audio_seconds < 5.0


def test_truncated_input_keeps_points_and_reports(tmp_path):
    class BrokenSource(FileSource):
        def frames(self):
            for i, frame in enumerate(super().frames()):
                if i == 120:
                    raise OSError("device unplugged")
                yield frame

    audio, _ = speech_timeline([("speech", 1.0), ("silence", 1.0), ("speech", 3.0)])
    path = tmp_path / "x.wav"
    sf.write(str(path), audio, SAMPLE_RATE)
    sink = ListSink()
    pipeline = MonitorPipeline(BrokenSource(path, realtime=False), LoudnessModel(),
                               Projector(DiagonalReducer(), LABELS), sinks=[sink])
    summary = pipeline.run()
    assert summary.error == "device unplugged"
    assert len(sink.points) == 2  # the first segment and the open one, flushed at the failure
    assert sink.closed and "ended early" in summary.format()


def test_first_interrupt_drains_second_aborts_and_no_mark_is_taken_after_the_end(tmp_path):
    class InterruptingSink(ListSink):
        """Ctrl-C arriving while the dispatch thread is in an output, once per point."""

        def point(self, point):
            super().point(point)
            raise KeyboardInterrupt

    class SlowFirstModel(LoudnessModel):
        """The first batch takes a second, so every later segment is queued before the first point goes out."""

        def embed_waveforms(self, waves, baseline=None):
            if self.calls == 1:  # call 0 is the warm-up
                time.sleep(1.0)
            return super().embed_waveforms(waves, baseline)

    path, _ = replay_file(tmp_path, [("speech", 1.0), ("silence", 0.8)] * 6)
    sink = InterruptingSink()
    pipeline = make_pipeline(path, [sink])
    pipeline.worker.model = SlowFirstModel()
    with pytest.raises(KeyboardInterrupt):
        pipeline.run()
    assert pipeline.stopping and len(sink.points) == 2  # the first stopped gracefully, the second aborted
    assert sink.closed  # outputs are closed (flushed) even on abort
    with pytest.raises(RuntimeError, match="ended"):
        pipeline.add_mark("too late")
    assert sink.marks == []


class AlternatingEncoder:
    """A speaker encoder stand-in: segments alternate between the patient's and the clinician's voice."""

    name, version, dim = "alternating", "1", 2

    def __init__(self) -> None:
        self.n = 0

    def embed(self, waves):
        out = []
        for _ in waves:
            out.append([1.0, 0.0] if self.n % 2 == 0 else [0.0, 1.0])
            self.n += 1
        return np.asarray(out, dtype=np.float32)


@pytest.mark.parametrize("count", ["patient", "all"])
def test_only_counted_points_reach_the_heat_map(tmp_path, count):
    """Issue 14: with a patient voiceprint, another voice's point is passed on labelled but not mapped."""
    from calibration.attribution import AttributionConfig, Voiceprint
    from monitor.live.speakers import SpeakerAttributor

    parts = [("silence", 0.5)] + [("speech", 1.5), ("silence", 1.0)] * 4
    path, _ = replay_file(tmp_path, parts)
    speakers = SpeakerAttributor(AlternatingEncoder(), Voiceprint(np.array([1.0, 0.0]), 1, 10.0, "alternating", "1"),
                                 Voiceprint(np.array([0.0, 1.0]), 1, 10.0, "alternating", "1"), count=count,
                                 config=AttributionConfig(threshold=0.86, margin=0.05, min_seconds=1.0))
    cfg = MonitorConfig(heatmap=HeatmapConfig(smoothing_sigma=0), status_interval_s=0.05)
    sink = ListSink()
    summary = MonitorPipeline(FileSource(path, realtime=False), LoudnessModel(), Projector(DiagonalReducer(), LABELS),
                              sinks=[sink], config=cfg, speakers=speakers).run()
    speakers_seen = [p.speaker for p in sink.points]
    assert len(sink.points) == 4 and set(speakers_seen) == {"patient", "clinician"}
    counted = [p for p in sink.points if p.counted]
    if count == "patient":
        assert all(p.speaker == "patient" for p in counted) and len(counted) == speakers_seen.count("patient")
    else:
        assert counted == sink.points
    assert sink.heatmap.snapshot().points == len(counted) == summary.points_counted
    assert summary.counting == count and summary.points == 4
    assert summary.speaker_seconds["clinician"] == pytest.approx(
        sum(p.duration for p in sink.points if p.speaker == "clinician"), abs=1e-3)
    assert sink.statuses[-1].speaker_seconds == summary.speaker_seconds
    assert "voices: patient" in summary.format()
