"""Real RAVDESS speech through source -> VAD -> worker (tiny WavLM) -> projector -> heat map."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from monitor.audio.io import read_audio
from monitor.model.bundle import load_bundle
from monitor.model.audio_format import SAMPLE_RATE
from monitor.live.heatmap import HeatmapConfig
from monitor.live.pipeline import MonitorConfig, MonitorPipeline
from monitor.live.projection import Projector
from monitor.audio.sources import FileSource
from tests.test_pipeline import ListSink


def loud_frames(audio: np.ndarray, frame: int = 480, floor_db: float = -30.0) -> np.ndarray:
    """Centre times of the frames within ``floor_db`` of the clip's loudest: its speech, by energy alone."""
    n = len(audio) // frame
    rms = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
    loud = np.nonzero(20 * np.log10(rms / rms.max()) > floor_db)[0]
    return (loud + 0.5) * frame / SAMPLE_RATE


def sound_extent(audio: np.ndarray, frame: int = 480, floor_db: float = -50.0) -> tuple[float, float]:
    """First and last frame with any sound (breaths and clicks included)."""
    n = len(audio) // frame
    rms = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
    loud = np.nonzero(20 * np.log10(rms / rms.max()) > floor_db)[0]
    return loud[0] * frame / SAMPLE_RATE, (loud[-1] + 1) * frame / SAMPLE_RATE


@pytest.fixture(scope="module")
def session_file(ravdess_dir, tmp_path_factory):
    """Six clips of two actors and several emotions, 1.5 s of silence apart, as one recording."""
    names = ["Actor_03/03-01-05-02-01-01-03.wav", "Actor_03/03-01-04-01-02-01-03.wav",
             "Actor_03/03-01-03-02-01-01-03.wav", "Actor_08/03-01-06-02-02-01-08.wav",
             "Actor_08/03-01-01-01-01-01-08.wav", "Actor_08/03-01-08-02-01-01-08.wav"]
    pieces, spans, t = [], [], 0.0
    gap = np.zeros(int(1.5 * SAMPLE_RATE), dtype=np.float32)
    for name in names:
        clip = read_audio(ravdess_dir / name)
        sound_start, sound_end = sound_extent(clip)
        spans.append((t + loud_frames(clip), t + sound_start, t + sound_end))
        pieces += [clip, gap]
        t += (len(clip) + len(gap)) / SAMPLE_RATE
    path = tmp_path_factory.mktemp("session") / "session.wav"
    sf.write(str(path), np.concatenate(pieces), SAMPLE_RATE)
    gaps = [(b - len(gap) / SAMPLE_RATE, b) for b in np.cumsum([(len(p)) / SAMPLE_RATE for p in pieces])[1::2]]
    return path, spans, gaps


def test_segments_match_the_speech_in_real_clips(session_file, tiny_bundle):
    path, spans, gaps = session_file
    bundle = load_bundle(tiny_bundle)
    model = bundle.build_model(device="cpu")
    sink = ListSink()
    config = MonitorConfig(heatmap=HeatmapConfig(mode="window", window_s=3600, smoothing_sigma=0))
    pipeline = MonitorPipeline(FileSource(path, realtime=False), model, Projector(bundle.reducer, bundle.labels),
                               sinks=[sink], config=config)
    summary = pipeline.run()

    assert summary.failed_segments == 0 and summary.error is None
    assert summary.points == len(sink.points) == summary.segments
    vad = config.vad
    for loud, sound_start, sound_end in spans:
        inside = [p for p in sink.points if p.t_end > sound_start and p.t_start < sound_end]
        assert inside, f"no segment covers the speech at {sound_start:.2f}-{sound_end:.2f} s"
        # segments stay within the clip's sound, widened only by the pre-roll and the hangover
        assert min(p.t_start for p in inside) >= sound_start - vad.start_padding_ms / 1000 - 0.031
        assert max(p.t_end for p in inside) <= sound_end + vad.end_padding_ms / 1000 + 0.031
        covered = np.mean([any(p.t_start <= t < p.t_end for p in inside) for t in loud])
        assert covered >= 0.9, f"only {covered:.0%} of the loud frames at {sound_start:.2f} s are in segments"
    # the digital silence between clips holds no segment
    for g0, g1 in gaps:
        assert not any(p.t_start >= g0 - 1e-6 and p.t_end <= g1 + 1e-6 for p in sink.points)
    assert len(sink.points) <= 2 * len(spans)
    for p in sink.points:
        assert -1.0 <= p.valence <= 1.0 and -1.0 <= p.arousal <= 1.0
        assert set(p.probabilities) <= set(bundle.labels)
    snapshot = pipeline.heatmap.snapshot()
    assert snapshot.points == len(sink.points)
    assert snapshot.total_weight == pytest.approx(sum(p.duration * p.confidence for p in sink.points), rel=1e-6)
