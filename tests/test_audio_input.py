"""Reading audio: odd formats, rates, channels and broken files give clean audio or a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from monitor.audio.io import AudioInputError, AudioStats, read_audio
from monitor.model.audio_format import SAMPLE_RATE
from monitor.audio.sources import FileSource, FrameChunker
from tests.synth import voiced


def _write(path, audio, sr, subtype=None):
    sf.write(str(path), audio, sr, subtype=subtype)
    return path


@pytest.mark.parametrize("sr", [8000, 11025, 16000, 22050, 32000, 44100, 48000])
def test_any_sample_rate_is_resampled_to_16k(tmp_path, sr):
    tone = voiced(1.0, sr=sr)
    audio = read_audio(_write(tmp_path / "x.wav", tone, sr))
    assert abs(len(audio) - SAMPLE_RATE) <= 2
    # the spectrum's energy stays where it was: compare RMS after resampling
    assert np.sqrt(np.mean(audio ** 2)) == pytest.approx(np.sqrt(np.mean(tone ** 2)), rel=0.05)


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_bit_depths(tmp_path, subtype):
    tone = voiced(0.5)
    audio = read_audio(_write(tmp_path / "x.wav", tone, SAMPLE_RATE, subtype))
    tolerance = 0.02 if subtype == "PCM_U8" else 1e-3
    assert np.max(np.abs(audio - tone)) < tolerance


@pytest.mark.parametrize("channels", [2, 3, 6])
def test_channels_are_averaged(tmp_path, channels):
    tone = voiced(0.5)
    multi = np.stack([tone * (i + 1) / channels for i in range(channels)], axis=1)
    audio = read_audio(_write(tmp_path / "x.flac", multi, SAMPLE_RATE))
    np.testing.assert_allclose(audio, multi.mean(axis=1), atol=2e-4)


def test_ogg_and_flac(tmp_path):
    tone = voiced(0.5)
    for name in ("x.flac", "x.ogg"):
        audio = read_audio(_write(tmp_path / name, tone, SAMPLE_RATE))
        assert abs(len(audio) - len(tone)) < 200


def test_nan_inf_and_clipping_are_repaired_and_counted(tmp_path):
    tone = voiced(0.5) * 3.0  # clipped
    tone[100:110] = np.nan
    tone[200] = np.inf
    path = _write(tmp_path / "x.wav", tone, SAMPLE_RATE, "FLOAT")
    stats = AudioStats()
    audio = read_audio(path, stats)
    assert np.all(np.isfinite(audio)) and np.max(np.abs(audio)) <= 1.0
    assert stats.nonfinite_samples == 11
    assert stats.clipped_samples > 0


def test_missing_file(tmp_path):
    with pytest.raises(AudioInputError, match="not found"):
        read_audio(tmp_path / "nope.wav")


def test_unreadable_file(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(b"RIFF" + bytes(range(256)) * 10)
    with pytest.raises(AudioInputError, match="cannot read"):
        read_audio(path)


def test_unsupported_format(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("this is not audio\n" * 50)
    with pytest.raises(AudioInputError, match="WAV, FLAC or OGG"):
        FileSource(path)


def test_empty_file(tmp_path):
    path = _write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    with pytest.raises(AudioInputError, match="no audio"):
        FileSource(path)


def test_truncated_file_keeps_what_is_there(tmp_path):
    path = _write(tmp_path / "full.wav", voiced(2.0), SAMPLE_RATE)
    data = path.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])  # header still promises 2 s
    audio = read_audio(cut)
    assert 0.9 * SAMPLE_RATE < len(audio) < 1.1 * SAMPLE_RATE


def test_file_source_frames_are_fixed_length_and_timed(tmp_path):
    path = _write(tmp_path / "x.wav", voiced(1.0, sr=44100), 44100)
    frames = list(FileSource(path, frame_ms=20, realtime=False).frames())
    assert all(len(f.samples) == 320 and f.samples.dtype == np.int16 for f in frames)
    starts = np.array([f.t_start for f in frames])
    np.testing.assert_allclose(np.diff(starts), 0.02, atol=1e-9)
    assert frames[0].t_start == 0.0
    assert frames[-1].t_end == pytest.approx(1.0, abs=0.021)


def test_file_source_paces_in_real_time(tmp_path):
    import time

    path = _write(tmp_path / "x.wav", voiced(0.6), SAMPLE_RATE)
    started = time.monotonic()
    list(FileSource(path, realtime=True).frames())
    assert time.monotonic() - started >= 0.55


def test_chunker_restarts_after_gap():
    chunker = FrameChunker(160)
    frames = list(chunker.push(np.zeros(400, dtype=np.float32)))
    assert [f.t_start for f in frames] == [0.0, 0.01]
    chunker.restart_at(5.0)
    frames = list(chunker.push(np.zeros(160, dtype=np.float32)))
    assert frames[0].t_start == 5.0
