"""run_monitor.py end to end, and its answers to bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from monitor.cli import EXIT_OK, EXIT_SETUP, main
from tests.conftest import REPO
from tests.synth import speech_timeline
from tests.test_microphone import FakeSoundDevice

QUIET = ["--no-store", "--no-dashboard"]


def test_replay_prints_points_within_the_clip(ravdess_clips, tiny_bundle):
    clip = ravdess_clips[10]
    duration = sf.info(str(clip)).duration
    proc = subprocess.run(
        [sys.executable, "run_monitor.py", "--input", str(clip), "--fast", "--model", str(tiny_bundle), "--jsonl", "-",
         *QUIET],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    header, points = records[0], records[1:]
    assert header["type"] == "session" and header["labels"] and header["model_id"] and header["source"]
    assert points and all(p["type"] == "point" and p["session"] == header["session"] for p in points)
    assert all(list(p["probabilities"]) == header["labels"] for p in points)  # every class, in label order
    for p in points:
        assert 0.0 <= p["t_start"] < p["t_end"] <= duration + 0.03
        assert -1 <= p["valence"] <= 1 and -1 <= p["arousal"] <= 1 and p["latency_ms"] >= 0
    assert f"-> {len(points)} points" in proc.stderr
    assert "latency p50" in proc.stderr


def test_help_teaches_the_main_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--input", "--fast", "--model", "--device", "--list-devices", "--jsonl", "--max-segment",
                 "--vad-aggressiveness"):
        assert flag in text


def test_missing_model_is_a_clear_setup_error(tmp_path, capsys):
    audio, _ = speech_timeline([("speech", 1.0)])
    sf.write(str(tmp_path / "x.wav"), audio, 16000)
    code = main(["--input", str(tmp_path / "x.wav"), "--model", str(tmp_path / "no_model"), *QUIET])
    assert code == EXIT_SETUP
    assert "model bundle not found" in capsys.readouterr().err


def test_unreadable_input(tmp_path, tiny_bundle, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"\x00\x01" * 1000)
    assert main(["--input", str(bad), "--model", str(tiny_bundle), *QUIET]) == EXIT_SETUP
    assert "cannot read" in capsys.readouterr().err


def test_silence_gives_a_clean_summary(tmp_path, tiny_bundle, capsys):
    sf.write(str(tmp_path / "quiet.wav"), np.zeros(16000 * 4, dtype=np.float32), 16000)
    out = tmp_path / "points.jsonl"
    summary = tmp_path / "summary.json"
    code = main(["--input", str(tmp_path / "quiet.wav"), "--fast", "--model", str(tiny_bundle), "--jsonl", str(out),
                 "--summary-json", str(summary), *QUIET])
    assert code == EXIT_OK
    assert [json.loads(line)["type"] for line in out.read_text().splitlines()] == ["session"]  # and no point
    data = json.loads(summary.read_text())
    assert data["points"] == 0 and data["segments"] == 0 and data["audio_seconds"] == pytest.approx(4.0, abs=0.03)
    assert "0 points" in capsys.readouterr().err


def test_odd_formats_and_damaged_samples_still_give_points(tmp_path, tiny_bundle):
    audio, _ = speech_timeline([("silence", 0.5), ("speech", 1.5), ("silence", 1.0)], sr=8000)
    audio[4000:4010] = np.nan
    stereo = np.stack([audio * 2.5, audio * 0.5], axis=1)  # clipped on one channel
    path = tmp_path / "odd.wav"
    sf.write(str(path), stereo, 8000, subtype="FLOAT")
    out = tmp_path / "points.jsonl"
    summary = tmp_path / "summary.json"
    assert main(["--input", str(path), "--fast", "--model", str(tiny_bundle), "--jsonl", str(out),
                 "--summary-json", str(summary), *QUIET]) == EXIT_OK
    points = [r for r in map(json.loads, out.read_text().splitlines()) if r["type"] == "point"]
    assert len(points) == 1 and 0.1 < points[0]["t_start"] < 0.6
    assert json.loads(summary.read_text())["repaired_samples"] > 0


def test_missing_microphone(monkeypatch, tiny_bundle, capsys):
    monkeypatch.setitem(sys.modules, "sounddevice", FakeSoundDevice(np.zeros(10), devices=[]))
    assert main(["--model", str(tiny_bundle), *QUIET]) == EXIT_SETUP
    err = capsys.readouterr().err
    assert "no default microphone" in err and "--list-devices" in err


def test_list_devices(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sounddevice", FakeSoundDevice(np.zeros(10)))
    assert main(["--list-devices"]) == EXIT_OK
    assert "Fake Mic" in capsys.readouterr().out


def test_fast_needs_input(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--fast"])
    assert exit_info.value.code == 2
    assert "--fast only applies" in capsys.readouterr().err


def test_ctrl_c_ends_the_session_gracefully(ravdess_clips, tiny_bundle, tmp_path):
    import signal
    import time

    from monitor.audio.io import read_audio

    long_audio = np.concatenate([read_audio(c) for c in ravdess_clips[:8]])
    path = tmp_path / "long.wav"
    sf.write(str(path), long_audio, 16000)
    out, summary = tmp_path / "points.jsonl", tmp_path / "summary.json"
    proc = subprocess.Popen(
        [sys.executable, "run_monitor.py", "--input", str(path), "--model", str(tiny_bundle), "--jsonl", str(out),
         "--summary-json", str(summary), *QUIET], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    points = [r for r in map(json.loads, out.read_text().splitlines()) if r["type"] == "point"]
    data = json.loads(summary.read_text())
    assert 2 <= len(points) == data["points"] < 8  # ended early, nothing written was lost
    assert data["audio_seconds"] < len(long_audio) / 16000 - 3
    assert "ending the session" in err and "latency p50" in err


def test_busy_dashboard_port_is_a_setup_error(tmp_path, tiny_bundle, capsys):
    import socket

    audio, _ = speech_timeline([("speech", 1.0)])
    sf.write(str(tmp_path / "x.wav"), audio, 16000)
    out = tmp_path / "points.jsonl"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["--input", str(tmp_path / "x.wav"), "--fast", "--model", str(tiny_bundle),
                     "--db", str(tmp_path / "store.sqlite"), "--port", str(port), "--jsonl", str(out)])
    assert code == EXIT_SETUP
    err = capsys.readouterr().err
    assert "--port" in err
    assert not out.exists() or out.read_text() == ""  # no output was written to
    from monitor.history.store import open_existing

    if (tmp_path / "store.sqlite").exists():  # the store may exist, but it recorded no session
        with open_existing(tmp_path / "store.sqlite") as store:
            assert store.sessions() == []
