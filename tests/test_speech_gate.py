"""The speech gate: non-speech the VAD lets through (tones, hum, music, noise) becomes no point; speech does.

The full measurement (every corpus clip, every kind of sound) is
benchmarks/bench_speech_gate.py; these tests check the same rules on a small
sample, and that the gate sits in the live path (segmenter, pipeline, CLI).
"""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import soundfile as sf

from monitor.audio.segmenter import VadConfig, segment_signal
from monitor.audio.speech_gate import judge
from monitor.model.audio_format import SAMPLE_RATE
from tests.conftest import REPO
from tests.synth import speech_timeline, voiced


def _bench():
    """The benchmark's sound generators (one definition of the synthetic non-speech)."""
    spec = importlib.util.spec_from_file_location("bench_speech_gate", REPO / "benchmarks" / "bench_speech_gate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_speech_gate", module)
    spec.loader.exec_module(module)
    return module


def _square(seconds: float = 30.0, f0: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return np.sign(np.sin(2 * np.pi * f0 * t)).astype(np.float32) * 0.999  # full scale


def test_every_kind_of_synthetic_non_speech_is_rejected():
    bench = _bench()
    for kind, sounds in bench.nonspeech_sounds(seed=1).items():
        for audio in sounds[::3]:  # a sample of each kind's variants
            for segment in segment_signal(np.concatenate([np.zeros(8000, np.float32), audio]),
                                          VadConfig(speech_gate=False)):
                verdict = judge(segment.audio)
                assert not verdict.speech, (kind, verdict)


def test_voice_like_synthetic_speech_passes():
    for seed, f0 in enumerate((100.0, 140.0, 220.0)):
        verdict = judge(voiced(4.0, f0=f0, seed=seed))
        assert verdict.speech, verdict


def test_real_speech_passes(ravdess_clips):
    from monitor.audio.io import read_audio

    kept = total = 0
    for clip in ravdess_clips:
        for segment in segment_signal(read_audio(clip), VadConfig(speech_gate=False)):
            total += 1
            kept += judge(segment.audio).speech
    assert total >= len(ravdess_clips) and kept == total


def test_real_speech_over_mains_hum_passes(ravdess_clips):
    from monitor.audio.io import read_audio

    bench = _bench()
    for clip in ravdess_clips[:6]:
        audio = read_audio(clip)
        noisy = np.clip(audio + bench.mains_hum(len(audio), 0.1 * float(np.sqrt(np.mean(audio ** 2)))), -1, 1)
        for segment in segment_signal(noisy, VadConfig(speech_gate=False)):
            assert judge(segment.audio).speech


def test_the_segmenter_gates_and_counts():
    from monitor.audio.segmenter import VadSegmenter, segment_frames
    from monitor.audio.sources import FrameChunker

    audio = np.concatenate([_square(8.0), np.zeros(SAMPLE_RATE, np.float32), voiced(2.0)])
    gated = VadSegmenter(VadConfig())
    chunker = FrameChunker(480)
    segments = []
    for frame in list(chunker.push(audio)) + list(chunker.flush()):
        segments += gated.push(frame)
    segments += gated.flush()
    assert len(segments) == 1 and segments[0].index == 0 and segments[0].t_start > 8.0  # the voice only
    assert gated.discarded_nonspeech == 2 and gated.nonspeech_seconds == pytest.approx(8.6, abs=0.3)  # + hangover
    assert gated.speech_seconds == pytest.approx(segments[0].duration)
    ungated = segment_frames(FrameChunker(480).push(audio), VadConfig(speech_gate=False))
    assert len(ungated) == 3


def test_the_pipeline_skips_non_speech_and_reports_it(tmp_path):
    from tests.test_pipeline import ListSink, make_pipeline

    audio, _ = speech_timeline([("silence", 0.5), ("speech", 1.5), ("silence", 1.0)])
    path = tmp_path / "mixed.wav"
    sf.write(str(path), np.concatenate([audio, _square(12.0)]), SAMPLE_RATE)
    sink = ListSink()
    summary = make_pipeline(path, [sink]).run()
    assert len(sink.points) == summary.points == 1
    assert summary.nonspeech_segments == 2 and summary.nonspeech_seconds == pytest.approx(12.0, abs=0.1)
    assert "non-speech segments skipped 2" in summary.format()
    assert sink.statuses[-1].nonspeech_segments == 2
    sink = ListSink()
    summary = make_pipeline(path, [sink], speech_gate=False).run()
    assert len(sink.points) == 3 and summary.nonspeech_segments == 0


def test_a_full_scale_square_wave_gives_no_points(tmp_path, tiny_bundle, capsys):
    """The report: 30 s of a full-scale square wave gave 5 confident "angry" points and "30 s of speech"."""
    from monitor.cli import EXIT_OK, main

    path = tmp_path / "square.wav"
    sf.write(str(path), _square(), SAMPLE_RATE)
    out, summary = tmp_path / "points.jsonl", tmp_path / "summary.json"
    code = main(["--input", str(path), "--fast", "--model", str(tiny_bundle), "--jsonl", str(out),
                 "--summary-json", str(summary), "--no-store", "--no-dashboard"])
    assert code == EXIT_OK
    assert [r for r in map(json.loads, out.read_text().splitlines()) if r["type"] == "point"] == []
    data = json.loads(summary.read_text())
    assert data["points"] == 0 and data["speech_seconds"] == 0.0
    assert data["nonspeech_segments"] == 5 and data["nonspeech_seconds"] == pytest.approx(30.0, abs=0.1)
    assert "non-speech segments skipped 5" in capsys.readouterr().err
    # --speech-gate off restores the VAD's own behaviour
    assert main(["--input", str(path), "--fast", "--model", str(tiny_bundle), "--summary-json", str(summary),
                 "--no-store", "--no-dashboard", "--speech-gate", "off"]) == EXIT_OK
    assert json.loads(summary.read_text())["points"] == 5
