"""A session's edges through the real program: broken and odd inputs, aborts, a store that stops storing, and what
the program says about them (summary, exit status, file permissions, messages)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from monitor.cli import EXIT_ENDED_EARLY, EXIT_INTERRUPTED, EXIT_NOT_STORED, EXIT_OK, EXIT_SETUP, main
from monitor.model.audio_format import SAMPLE_RATE
from tests.conftest import REPO
from tests.synth import speech_timeline

QUIET = ["--no-store", "--no-dashboard"]


def _speech(tmp_path, name="speech.wav", parts=None, **write):
    audio, spans = speech_timeline(parts or [("silence", 0.5), ("speech", 1.5), ("silence", 1.0), ("speech", 1.5),
                                             ("silence", 1.0)])
    path = tmp_path / name
    sf.write(str(path), audio, SAMPLE_RATE, **write)
    return path, audio, spans


def _points(jsonl):
    return [r for r in map(json.loads, jsonl.read_text().splitlines()) if r["type"] == "point"]


# ---- 5. inputs ----------------------------------------------------------------------------------

def test_a_truncated_recording_is_analysed_as_far_as_it_goes_and_reported(tmp_path, tiny_bundle, capsys):
    path, _, _ = _speech(tmp_path, "full.wav")
    cut = tmp_path / "cut.wav"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])  # the header still promises the whole 5.5 s
    out, summary = tmp_path / "p.jsonl", tmp_path / "s.json"
    code = main(["--input", str(cut), "--fast", "--model", str(tiny_bundle), "--jsonl", str(out),
                 "--summary-json", str(summary), *QUIET])
    err = capsys.readouterr().err
    assert code == EXIT_ENDED_EARLY, err
    assert "truncated" in err and "ended early" in err
    assert len(_points(out)) == 1  # the first stretch of speech, before the cut
    assert "truncated" in json.loads(summary.read_text())["error"]


def test_phase_inverted_stereo_is_not_silence(tmp_path, tiny_bundle, capsys):
    _, audio, _ = _speech(tmp_path)
    path = tmp_path / "inverted.wav"
    sf.write(str(path), np.stack([audio, -audio], axis=1), SAMPLE_RATE)
    out = tmp_path / "p.jsonl"
    assert main(["--input", str(path), "--fast", "--model", str(tiny_bundle), "--jsonl", str(out), *QUIET]) == EXIT_OK
    assert len(_points(out)) == 2
    assert "phase-inverted input channel(s) 2" in capsys.readouterr().err


def test_standard_input_as_the_input(tmp_path, tiny_bundle):
    path, _, _ = _speech(tmp_path)
    out = tmp_path / "p.jsonl"
    proc = subprocess.run([sys.executable, "run_monitor.py", "--input", "-", "--fast", "--model", str(tiny_bundle),
                           "--jsonl", str(out), *QUIET], cwd=REPO, input=path.read_bytes(), capture_output=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert len(_points(out)) == 2


def test_a_fifo_with_a_silent_writer_stops_on_sigterm(tmp_path, tiny_bundle):
    """The FIFO is opened once (it used to be opened twice and hang); a writer that goes quiet does not keep
    SIGTERM from ending the session."""
    path, _, _ = _speech(tmp_path)
    fifo = tmp_path / "live.fifo"
    os.mkfifo(fifo)
    out = tmp_path / "p.jsonl"
    proc = subprocess.Popen([sys.executable, "run_monitor.py", "--input", str(fifo), "--model", str(tiny_bundle),
                             "--jsonl", str(out), *QUIET], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    writer = open(fifo, "wb")  # noqa: SIM115 - held open, silent, like a recorder that stopped sending
    try:
        writer.write(path.read_bytes()[: 44 + 2 * SAMPLE_RATE * 3])  # header + 3 s, then nothing
        writer.flush()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (out.exists() and _points(out)):
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
        assert _points(out), "no point from the FIFO"
        time.sleep(1.0)
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert time.monotonic() - stopped < 20
        assert proc.returncode == EXIT_OK, err
        assert "delivered nothing" in err and "session " in err  # said why, then the summary
    finally:
        writer.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# ---- 6. a second Ctrl-C during --fast -------------------------------------------------------------

@pytest.mark.slow
def test_a_second_ctrl_c_during_a_fast_replay_exits_130(tmp_path, ravdess_clips):
    """With the shipped (openSMILE) model, a second SIGINT used to abort the process (SIGABRT, "FATAL: exception
    not rethrown") in most runs: the model's thread was still in native code at exit. Repeated a few times."""
    from monitor.audio.io import read_audio

    gap = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    audio = np.concatenate([x for clip in ravdess_clips for x in (read_audio(clip), gap)])
    long_wav = tmp_path / "long.wav"
    sf.write(str(long_wav), audio, SAMPLE_RATE)
    out = tmp_path / "p.jsonl"
    codes = []
    for gap_s in (0.05, 0.2, 0.2, 0.5):
        if out.exists():
            out.unlink()
        proc = subprocess.Popen([sys.executable, "run_monitor.py", "--input", str(long_wav), "--fast", "--jsonl",
                                 str(out), *QUIET], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not (out.exists() and len(_points(out)) >= 2):
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        time.sleep(gap_s)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        codes.append(proc.returncode)
        assert "FATAL" not in err and "Traceback" not in err, err[-3000:]
    assert codes == [EXIT_INTERRUPTED] * 4, codes


def test_an_abort_joins_the_stages_before_returning(tmp_path):
    """In process: the second interrupt stops the segmenter and the model's worker before run() returns."""
    from tests.test_pipeline import ListSink, LoudnessModel, make_pipeline

    class SlowModel(LoudnessModel):
        def embed_waveforms(self, waves, baseline=None):
            time.sleep(0.3)
            return super().embed_waveforms(waves, baseline)

    class InterruptingSink(ListSink):
        def point(self, point):
            super().point(point)
            raise KeyboardInterrupt

    path, _, _ = _speech(tmp_path, parts=[("speech", 1.0), ("silence", 0.8)] * 12)
    pipeline = make_pipeline(path, [InterruptingSink()])
    pipeline.worker.model = SlowModel()
    with pytest.raises(KeyboardInterrupt):
        pipeline.run()
    assert pipeline.busy_threads() == []
    assert not pipeline.worker.is_alive()


# ---- 8. a store that stops storing -----------------------------------------------------------------

def test_points_the_store_could_not_keep_are_counted_and_exit_3(tmp_path, tiny_bundle, capsys):
    """Deleting the live patient made the monitor drop every later point with a log line, then exit 0 with a
    summary that counted them as stored."""
    from monitor.history.store import Store

    path, _, _ = _speech(tmp_path, parts=[("silence", 0.5)] + [("speech", 1.2), ("silence", 1.0)] * 4)
    db = tmp_path / "store.sqlite"
    summary = tmp_path / "s.json"
    deleted = threading.Event()

    def delete_the_patient_once_the_session_exists():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if db.exists():
                with Store.open(db, recover=False) as store:
                    if store.has_patient("P-GONE") and store.sessions("P-GONE"):
                        store.delete_patient("P-GONE")
                        deleted.set()
                        return
            time.sleep(0.05)

    helper = threading.Thread(target=delete_the_patient_once_the_session_exists, daemon=True)
    helper.start()
    code = main(["--input", str(path), "--model", str(tiny_bundle), "--db", str(db), "--patient", "P-GONE",
                 "--summary-json", str(summary), "--no-dashboard"])  # real time: the deletion comes first
    helper.join(5)
    err = capsys.readouterr().err
    assert deleted.is_set()
    data = json.loads(summary.read_text())
    assert data["points"] >= 3 and data["points_not_stored"] == data["points"], data
    assert code == EXIT_NOT_STORED, err
    assert "NOT STORED" in err
    from monitor.cli import build_parser

    assert "3    points or marks were not stored" in build_parser().format_help()


# ---- 9. small ones -------------------------------------------------------------------------------------

def test_outputs_holding_clinical_data_are_private(tmp_path, tiny_bundle):
    from monitor.history import data as data_cli
    from monitor.history import report as report_cli

    path, _, _ = _speech(tmp_path)
    db, out, summary = tmp_path / "store.sqlite", tmp_path / "new" / "points.jsonl", tmp_path / "s.json"
    assert main(["--input", str(path), "--fast", "--model", str(tiny_bundle), "--db", str(db), "--patient", "P1",
                 "--jsonl", str(out), "--summary-json", str(summary), "--no-dashboard"]) == EXIT_OK
    export_dir, export_json = tmp_path / "export" / "p1", tmp_path / "export.json"
    assert data_cli.main(["--db", str(db), "export", "--patient", "P1", "--out", str(export_dir)]) == 0
    assert data_cli.main(["--db", str(db), "export", "--patient", "P1", "--out", str(export_json)]) == 0
    reports = [tmp_path / "reports" / "r.png", tmp_path / "reports" / "r.json"]
    assert report_cli.main(["--db", str(db), "--patient", "P1", *sum((["--out", str(r)] for r in reports), [])]) == 0
    files = [out, summary, export_json, *export_dir.iterdir(), *reports]
    assert len(files) == 9
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    for folder in (out.parent, export_dir, export_dir.parent, reports[0].parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_a_fast_replay_is_as_long_as_its_recording(tmp_path, tiny_bundle, capsys):
    """It was stored and reported as "0.0 minutes" (the wall-clock time of the replay)."""
    from monitor.history import data as data_cli
    from monitor.history.aggregate import history_json
    from monitor.history.report import session_table_cells
    from monitor.history.store import Store

    path, audio, _ = _speech(tmp_path)
    db = tmp_path / "store.sqlite"
    assert main(["--input", str(path), "--fast", "--model", str(tiny_bundle), "--db", str(db), "--patient", "P1",
                 "--no-dashboard"]) == EXIT_OK
    minutes = len(audio) / SAMPLE_RATE / 60
    with Store.open(db) as store:
        [row] = store.sessions("P1")
        assert row.minutes == pytest.approx(minutes, abs=0.01) and row.audio_seconds == pytest.approx(5.5, abs=0.05)
        history = history_json(store, "P1", days=1)
    assert history["sessions"][0]["minutes"] == pytest.approx(minutes, abs=0.01)
    assert session_table_cells(history)[0][2] == f"{minutes:.1f}" != "0.0"
    capsys.readouterr()
    assert data_cli.main(["--db", str(db), "sessions", "--patient", "P1"]) == 0
    assert f" {minutes:.1f} " in capsys.readouterr().out


def test_compute_cuda_without_a_gpu_names_this_programs_flag(tmp_path, tiny_bundle, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    path, _, _ = _speech(tmp_path)
    assert main(["--input", str(path), "--model", str(tiny_bundle), "--compute", "cuda", *QUIET]) == EXIT_SETUP
    err = capsys.readouterr().err
    assert "--compute cpu" in err and "--device" not in err  # --device picks the microphone here


def test_list_devices_without_any_device_is_an_error(monkeypatch, capsys):
    from tests.test_microphone import FakeSoundDevice

    monkeypatch.setitem(sys.modules, "sounddevice", FakeSoundDevice(np.zeros(10), devices=[]))
    assert main(["--list-devices"]) == EXIT_SETUP
    captured = capsys.readouterr()
    assert captured.out == "" and "no audio devices" in captured.err


def test_evaluate_on_a_folder_of_audio_says_what_it_needs(tmp_path, ravdess_dir):
    bundle = REPO / "monitor" / "model" / "bundles" / "egemaps"
    for args in (["--bundle", str(bundle), "--embeddings", str(ravdess_dir.parent / "emovo")],
                 ["--bundle", str(ravdess_dir.parent / "emovo"), "--embeddings", str(tmp_path / "x.npz")]):
        proc = subprocess.run([sys.executable, "-m", "calibration.evaluate", *args, "--out", str(tmp_path / "o")],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")
    assert "training score" in proc.stderr or "bundle" in proc.stderr


# ---- the clinician's view: calibration status --------------------------------------------------

def test_the_summary_and_the_store_say_whether_the_speaker_was_enrolled(tmp_path, tiny_bundle, capsys):
    """Without enrolment the summary says plainly that placement is uncalibrated; the store's row says so too."""
    from monitor.history.store import Store

    path, _, _ = _speech(tmp_path)
    db, summary = tmp_path / "store.sqlite", tmp_path / "s.json"
    assert main(["--input", str(path), "--fast", "--model", str(tiny_bundle), "--db", str(db), "--patient", "P1",
                 "--summary-json", str(summary), "--no-dashboard"]) == EXIT_OK
    err = capsys.readouterr().err
    data = json.loads(summary.read_text())
    assert data["calibration"]["enrolled"] is False and data["calibration"]["label"] == "uncalibrated"
    assert "speaker calibration: Uncalibrated" in err and "population averages" in err
    with Store.open(db) as store:
        [row] = store.sessions("P1")
    assert row.enrolled is False and row.to_dict()["enrolled"] is False
    assert row.calibration["text"] == data["calibration"]["text"]


def test_an_enrolled_session_reads_as_calibrated():
    from monitor.live.placement import calibration_status

    status = calibration_status({"normalization": "enrolment",
                                 "speaker_baseline": {"source": "calm.wav", "created": 1.0, "seconds": 45.0}})
    assert status["enrolled"] is True and status["label"] == "enrolled" and "45 s" in status["text"]
    for settings in ({}, None, {"normalization": "population", "speaker_baseline": None}):
        assert calibration_status(settings)["enrolled"] is False
        assert calibration_status(settings)["text"].startswith("Uncalibrated")


def test_an_edited_or_deleted_mark_is_changed_in_the_store(tmp_path):
    """The dashboard's mark edit/delete reaches the store through the live sink, after the mark itself."""
    from monitor.history.sink import StoreSink
    from monitor.history.store import Store
    from monitor.live.events import Mark, SessionInfo

    with Store.open(tmp_path / "m.sqlite") as store:
        sink = StoreSink(store, patient_id="P1")
        sink.start(SessionInfo(session_id="s1", started_at=1767225600.0, model_id="m", model_version="v",
                               device="cpu", labels=("a",), source="t", patient_id="P1"))
        first, second = Mark(1.0, "first", 1767225601.0), Mark(2.0, "second", 1767225602.0)
        sink.mark(first)
        sink.mark(second)
        sink.edit_mark(first, Mark(1.0, "first, edited", 1767225601.0))  # queued right behind the mark itself
        sink.edit_mark(second, None)
        sink.close()
        assert [m["text"] for m in store.mark_records("s1")] == ["first, edited"]
        assert sink.dropped_marks == 0
        assert store.edit_mark("s1", 9.0, 1.0, "nothing there") == 0
