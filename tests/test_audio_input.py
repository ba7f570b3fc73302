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


# ---- issue 15: truncated files, phase-inverted channels, streams, permissions ------------------------

def _cut(path, fraction, out):
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


@pytest.mark.parametrize("name, fraction", [("x.wav", 0.5), ("x.ogg", 0.9), ("x.ogg", 0.7)])
def test_a_truncated_file_is_replayed_as_far_as_it_goes_then_raises(tmp_path, name, fraction, caplog):
    from monitor.audio.io import AudioTruncatedError

    full = _write(tmp_path / name, voiced(4.0), SAMPLE_RATE)
    cut = _cut(full, fraction, tmp_path / f"cut-{name}")
    source = FileSource(cut, realtime=False)
    assert "truncated" in caplog.text  # said loudly when the file is opened
    frames = []
    with pytest.raises(AudioTruncatedError, match="truncated") as info:
        for frame in source.frames():
            frames.append(frame)
    assert frames and info.value.seconds_read == pytest.approx(len(frames) * 0.03, abs=0.1)
    assert info.value.seconds_read < 3.9


def test_a_complete_file_is_not_called_truncated(tmp_path):
    for name in ("x.wav", "x.ogg", "x.flac"):
        path = _write(tmp_path / name, voiced(2.0), SAMPLE_RATE)
        assert len(list(FileSource(path, realtime=False).frames())) == pytest.approx(2.0 / 0.03, abs=2)


def test_phase_inverted_channels_do_not_cancel(tmp_path, caplog):
    tone = voiced(2.0)
    stereo = np.stack([tone, -tone], axis=1)  # a miswired microphone: the plain average is silence
    stats = AudioStats()
    audio = read_audio(_write(tmp_path / "inverted.wav", stereo, SAMPLE_RATE), stats)
    assert np.sqrt(np.mean(audio ** 2)) == pytest.approx(np.sqrt(np.mean(tone ** 2)), rel=0.01)
    assert stats.inverted_channels == [1] and "phase-inverted" in caplog.text
    # Uncorrelated channels (two different talkers) are still simply averaged.
    other = voiced(2.0, f0=210.0, seed=3)
    mixed = read_audio(_write(tmp_path / "two.wav", np.stack([tone, other], axis=1), SAMPLE_RATE))
    np.testing.assert_allclose(mixed, (tone + other) / 2, atol=2e-4)


def _wav_bytes(audio, sr=SAMPLE_RATE, fmt="WAV"):
    import io

    buf = io.BytesIO()
    sf.write(buf, audio, sr, format=fmt)
    return buf.getvalue()


def test_a_fifo_is_read_once_as_a_stream(tmp_path):
    import os
    import threading

    fifo = tmp_path / "live.fifo"
    os.mkfifo(fifo)
    payload = _wav_bytes(voiced(1.5))

    def writer():
        with open(fifo, "wb") as f:
            f.write(payload)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    source = FileSource(fifo, realtime=False)  # opens the FIFO once (the writer connects)
    frames = list(source.frames())
    thread.join(5)
    assert source.stream and len(frames) == pytest.approx(1.5 / 0.03, abs=2)


def test_standard_input_is_a_stream(tmp_path, monkeypatch):
    import io
    import os
    import threading

    read_end, write_end = os.pipe()
    payload = _wav_bytes(voiced(1.0), fmt="WAV")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(os.fdopen(read_end, "rb")))
    thread = threading.Thread(target=lambda: (os.write(write_end, payload), os.close(write_end)), daemon=True)
    thread.start()
    source = FileSource("-", realtime=False)
    assert source.description == "stdin"
    assert len(list(source.frames())) == pytest.approx(1.0 / 0.03, abs=2)
    thread.join(5)


def test_a_stream_in_a_format_that_needs_seeking_is_refused_at_once(tmp_path, monkeypatch):
    import io
    import os
    import threading

    read_end, write_end = os.pipe()
    payload = _wav_bytes(voiced(1.0), fmt="FLAC")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(os.fdopen(read_end, "rb")))
    thread = threading.Thread(target=lambda: (os.write(write_end, payload), os.close(write_end)), daemon=True)
    thread.start()
    with pytest.raises(AudioInputError, match="stream"):
        FileSource("-", realtime=False)
    thread.join(5)


def test_permission_denied_says_so(tmp_path, monkeypatch):
    import errno
    import os

    path = _write(tmp_path / "secret.wav", voiced(0.5), SAMPLE_RATE)
    os.chmod(path, 0)
    if os.geteuid() == 0:  # root reads anything: make the open fail as it would for anyone else
        real_open = os.open

        def denied(p, *args, **kwargs):
            if str(p) == str(path):
                raise PermissionError(errno.EACCES, "Permission denied", str(p))
            return real_open(p, *args, **kwargs)

        monkeypatch.setattr("monitor.audio.io.os.open", denied)
    with pytest.raises(AudioInputError, match="permission denied"):
        FileSource(path)
