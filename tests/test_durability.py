"""A monitor killed with SIGKILL mid-session loses at most the last second of points; the store opens cleanly.

Run on both backends (a SQLite file; a database on a real PostgreSQL server),
plus PostgreSQL's own case: committed points survive the server crashing
(``pg_ctl stop -m immediate``) and the store's connections recover.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from monitor.history.database import Database
from monitor.history.store import Store

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")]


def long_recording(clips: list[Path], out: Path, n: int = 16, gap_s: float = 0.7) -> Path:
    """Real speech clips with short pauses between them, so each clip becomes a point."""
    import soundfile as sf

    parts, rate = [], None
    for clip in clips[:n]:
        audio, sr = sf.read(clip, dtype="float32", always_2d=True)
        rate = rate or sr
        assert sr == rate
        parts += [audio.mean(axis=1), np.zeros(int(gap_s * sr), dtype=np.float32)]
    sf.write(out, np.concatenate(parts), rate)
    return out


def stored_indices(db: Path | str) -> set[int] | None:
    """Look at the database as the app's readers do (the dashboard's history, the reports, in another process).

    Through the store's own connection set-up (WAL, read-write): a ``mode=ro`` connection may not see the
    write-ahead log's last commit, which would make the store look as if it trailed the JSONL output.
    """
    if isinstance(db, str):  # PostgreSQL: any committed row is visible to a new statement
        import psycopg

        try:
            with psycopg.connect(db, autocommit=True) as conn:
                return {r[0] for r in conn.execute("SELECT idx FROM points")}
        except psycopg.Error:
            return None  # the schema is not there yet
    if not db.exists():
        return None
    database = Database(db)
    try:
        return {r[0] for r in database.conn.execute("SELECT idx FROM points")}
    except sqlite3.Error:
        return None  # not created yet, or mid-creation
    finally:
        database.close()


def emitted_points(jsonl: Path) -> list[dict]:
    if not jsonl.exists():
        return []
    out = []
    for line in jsonl.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if record.get("type") == "point":
            out.append(record)
    return out


def test_sigkill_mid_session(target, tmp_path, tiny_bundle, ravdess_clips):
    wav = long_recording(ravdess_clips, tmp_path / "long.wav")
    db, jsonl, log = target, tmp_path / "points.jsonl", tmp_path / "monitor.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "run_monitor.py"), "--input", str(wav), "--model", str(tiny_bundle),
             "--db", str(db), "--data-dir", str(tmp_path), "--jsonl", str(jsonl), "--patient", "P-KILL",
             "--no-dashboard"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
    try:
        # Poll both outputs: when did each point appear in the JSONL (written first) and in the store?
        seen_jsonl: dict[int, float] = {}
        seen_db: dict[int, float] = {}
        deadline = time.monotonic() + 150
        kill_after: float | None = None
        while time.monotonic() < deadline:
            now = time.monotonic()
            for p in emitted_points(jsonl):
                seen_jsonl.setdefault(p["index"], now)
            for i in stored_indices(db) or ():
                seen_db.setdefault(i, now)
            if kill_after is None and len(seen_db) >= 5:
                kill_after = now + random.uniform(0.0, 2.0)  # not always right after a commit
            if kill_after is not None and now >= kill_after:
                break
            assert proc.poll() is None, f"the monitor exited early:\n{log.read_text()[-3000:]}"
            time.sleep(0.02)
        else:
            pytest.fail(f"no points stored within the time limit:\n{log.read_text()[-3000:]}")
        killed_at = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    emitted = {p["index"]: p for p in emitted_points(jsonl)}
    with Store.open(db) as store:
        assert store.integrity_check() == "ok"
        [session] = store.sessions("P-KILL")
        assert store.recovered_sessions == [session.session_id]  # closed on open: the writer is dead
        assert session.end_state == "recovered"
        stored = {r["index"]: r for r in store.point_records(session.session_id)}
        assert session.ended_at == pytest.approx(max(r["wall_time"] for r in stored.values()))

    assert set(stored) <= set(emitted)
    for i, row in stored.items():  # what was stored is exactly what was emitted
        for key in ("t_start", "t_end", "valence", "arousal", "confidence", "wall_time"):
            assert row[key] == pytest.approx(emitted[i][key], abs=1e-9), key
    lost = sorted(set(emitted) - set(stored))
    ages = [killed_at - emitted[i]["wall_time"] for i in lost]
    assert all(age < 1.0 for age in ages), f"lost points older than 1 s: {list(zip(lost, ages, strict=True))}"
    lags = [seen_db[i] - seen_jsonl[i] for i in seen_db if i in seen_jsonl]
    assert lags and max(lags) < 1.0, f"store lagged the JSONL by {max(lags):.2f} s"
    print(f"\nSIGKILL after {len(emitted)} points: {len(stored)} stored, {len(lost)} lost "
          f"(ages {[round(a, 2) for a in ages]} s); store lag behind JSONL max {max(lags) * 1000:.0f} ms "
          f"(poll interval 20 ms)")


def test_pipeline_to_store_in_process_with_kept_audio(target, tmp_path, tiny_bundle, ravdess_clips):
    """The library path the example report uses: FileSource -> MonitorPipeline -> StoreSink (+ JSONL)."""
    import soundfile as sf

    from monitor.model.bundle import load_bundle
    from monitor.live.events import SessionInfo
    from monitor.live.outputs import JsonlSink
    from monitor.live.pipeline import MonitorPipeline, new_session_id
    from monitor.live.projection import Projector
    from monitor.audio.sources import FileSource
    from monitor.history.sink import StoreSink

    wav = long_recording(ravdess_clips, tmp_path / "short.wav", n=3)
    bundle = load_bundle(tiny_bundle)
    model = bundle.build_model(device="cpu", precision="fp32")
    session = SessionInfo(session_id=new_session_id(), started_at=time.time(), model_id=bundle.model_id,
                          model_version=bundle.version, device="cpu", labels=tuple(bundle.labels), source="test")
    with Store.open(target) as store:
        sink = StoreSink(store, patient_id="P-AUDIO", keep_audio=True)
        jsonl = tmp_path / "p.jsonl"
        summary = MonitorPipeline(FileSource(wav, realtime=False), model, Projector(bundle.reducer, bundle.labels),
                                  sinks=[JsonlSink(jsonl), sink], session=session).run()
        assert summary.points >= 2 and sink.dropped == 0
        emitted = emitted_points(jsonl)
        stored = store.point_records(session.session_id)
        assert [(p["index"], p["valence"], p["arousal"]) for p in emitted] == [
            (p["index"], p["valence"], p["arousal"]) for p in stored]
        row = store.session(session.session_id)
        assert row.patient_id == "P-AUDIO" and row.end_state == "clean" and row.model_id == bundle.model_id
        audio = store.audio_records(session.session_id)
        assert [a["index"] for a in audio] == [p["index"] for p in stored]
        for a, p in zip(audio, stored, strict=True):
            info = sf.info(tmp_path / a["path"])
            assert info.samplerate == 16000 and info.format == "FLAC"
            assert info.frames == a["samples"] == pytest.approx((p["t_end"] - p["t_start"]) * 16000, abs=16)


def test_committed_points_survive_a_postgresql_crash(pg_server, pg_url, tmp_path):
    """pg_ctl stop -m immediate (no shutdown checkpoint: what a power cut leaves) and start: every committed point
    is there, and the store's broken connections are replaced on the next call."""
    from tests.test_store import make_point, session_info

    import psycopg

    with Store.open(pg_url, data_dir=tmp_path) as store:
        store.begin_session(session_info("s-crash", time.time()))
        points = [make_point(i, i * 2.0, time.time()) for i in range(50)]
        for i in range(0, 50, 10):
            store.write_batch("s-crash", points[i:i + 10])  # five commits, as the sink makes them
        pg_server.restart_after_crash()
        with pytest.raises(psycopg.OperationalError):
            store.write_batch("s-crash", [make_point(50, 100.0, time.time())])  # this thread's connection died
        store.write_batch("s-crash", [make_point(50, 100.0, time.time())])  # the sink's retry: a new connection
        stored = store.point_records("s-crash")
        assert [r["index"] for r in stored] == list(range(51))
        assert [r["valence"] for r in stored[:50]] == [p.valence for p in points]
        assert store.integrity_check() == "ok"
