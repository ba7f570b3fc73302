"""The store: schema and migration, the pipeline sink, baselines, export and complete deletion.

Tests that take ``target`` run on both backends: a SQLite file and a fresh
database on a real PostgreSQL server (``tests/postgres.py``). Tests about the
SQLite file itself (WAL mode, file mode, its raw bytes) stay SQLite-only and
have PostgreSQL counterparts below where they mean something there.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from monitor.history import data as data_cli
from monitor.live.events import Mark, Point, SessionInfo
from monitor.history.sink import StoreSink
from monitor.history.store import MIGRATIONS, SCHEMA_VERSION, Store, StoreError, default_db_path, open_backend

# The schema as first released (version 1), frozen here so the migration test starts from
# what real v1 files contain even if someone edits monitor/history/schema.py.
V1_DDL = """
CREATE TABLE patients (
    patient_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL
);
CREATE TABLE sessions (
    id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL UNIQUE,
    patient_id TEXT REFERENCES patients(patient_id) ON DELETE CASCADE,
    started_at REAL NOT NULL,
    ended_at REAL,
    model_id TEXT NOT NULL,
    model_version TEXT NOT NULL,
    device TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT '',
    labels TEXT NOT NULL DEFAULT '[]',
    settings TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE points (
    session INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    t_start REAL NOT NULL,
    t_end REAL NOT NULL,
    valence REAL NOT NULL,
    arousal REAL NOT NULL,
    confidence REAL NOT NULL,
    probabilities TEXT NOT NULL DEFAULT '{}',
    latency_ms REAL,
    wall_time REAL NOT NULL,
    PRIMARY KEY (session, idx)
) WITHOUT ROWID;
CREATE TABLE marks (
    id INTEGER PRIMARY KEY,
    session INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    t REAL NOT NULL,
    text TEXT NOT NULL,
    wall_time REAL NOT NULL,
    source TEXT NOT NULL DEFAULT ''
);
PRAGMA user_version = 1;
"""


def session_info(sid: str, started_at: float, patient: str | None = "P1") -> SessionInfo:
    return SessionInfo(session_id=sid, started_at=started_at, model_id="test-model@1+abc", model_version="1",
                       device="cpu", labels=("neutral", "happy", "sad", "angry"), source="file:x.wav",
                       patient_id=patient, settings={"vad": {"aggressiveness": 2}})


def make_point(i: int, t0: float, wall: float, v: float = 0.1, a: float = -0.2, d: float = 1.5) -> Point:
    return Point(index=i, t_start=t0, t_end=t0 + d, valence=v, arousal=a, confidence=0.8,
                 probabilities={"neutral": 0.8, "sad": 0.2}, latency_ms=12.5, wall_time=wall)


def columns(conn: sqlite3.Connection) -> dict[str, list[tuple]]:
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
    return {t: [tuple(r) for r in conn.execute(f"PRAGMA table_info({t})")] for t in tables}


def schema_of(store: Store) -> dict[str, list[tuple]]:
    """Each table's columns as (name, type, not null, default, primary key position) on either backend."""
    if isinstance(store.path, str):  # PostgreSQL
        rows = store.conn.execute(
            """SELECT c.table_name AS t, c.column_name AS name, c.data_type AS type, c.is_nullable = 'NO' AS notnull,
                      c.column_default AS dflt, COALESCE(k.ordinal_position, 0) AS pk
               FROM information_schema.columns c
               LEFT JOIN information_schema.table_constraints tc ON tc.table_name = c.table_name
                    AND tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = c.table_schema
               LEFT JOIN information_schema.key_column_usage k ON k.constraint_name = tc.constraint_name
                    AND k.column_name = c.column_name AND k.table_schema = c.table_schema
               WHERE c.table_schema = current_schema() AND c.table_name <> 'mood_monitor_schema'
               ORDER BY c.table_name, c.ordinal_position""").fetchall()
        out: dict[str, list[tuple]] = {}
        for r in rows:
            out.setdefault(r["t"], []).append((r["name"], r["type"], bool(r["notnull"]), r["dflt"], r["pk"]))
        return out
    return {t: [(c[1], c[2], bool(c[3]), c[4], c[5]) for c in cols] for t, cols in columns(store.conn).items()}


def make_v1_store(target) -> None:
    """A version 1 store (the frozen DDL above, through the backend's own DDL translation) holding data."""
    db = open_backend(target)
    try:
        with db.transaction() as c:
            db.lock_schema(c)
            for statement in V1_DDL.split(";"):
                if statement.strip() and not statement.strip().startswith("PRAGMA"):
                    c.execute(db.ddl(statement.strip()))
            db.set_schema_version(c, 1)
            c.execute("INSERT INTO patients VALUES ('P1', 1000.0)")
            for sid, ended in (("s-ended", 1600.0), ("s-killed", None)):
                start = 1000.0 if ended else 2000.0
                c.execute("INSERT INTO sessions(session_id, patient_id, started_at, ended_at, model_id, model_version) "
                          "VALUES (?, 'P1', ?, ?, 'm', '1')", (sid, start, ended))
            ids = {r["session_id"]: r["id"] for r in c.execute("SELECT id, session_id FROM sessions")}
            for i in range(3):
                c.execute("INSERT INTO points VALUES (?, ?, ?, ?, 0.5, -0.5, 0.9, '{}', 10, ?)",
                          (ids["s-ended"], i, i * 2.0, i * 2.0 + 1, 1001.0 + i))
                c.execute("INSERT INTO points VALUES (?, ?, ?, ?, -0.1, 0.3, 0.6, '{}', 10, ?)",
                          (ids["s-killed"], i, i * 2.0, i * 2.0 + 1, 2010.0 + i))
            c.execute("INSERT INTO marks(session, t, text, wall_time) VALUES (?, 3.0, 'laughs', 1003.0)",
                      (ids["s-ended"],))
        assert db.schema_version() == 1
    finally:
        db.close()


def test_fresh_store_is_wal_and_current(tmp_path):
    path = tmp_path / "sub" / "m.sqlite"
    with Store.open(path) as store:
        assert store.schema_version() == SCHEMA_VERSION == len(MIGRATIONS)
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert store.integrity_check() == "ok"
    if os.name == "posix":
        assert (path.stat().st_mode & 0o077) == 0  # clinical data: owner only


def test_frozen_v1_matches_the_first_migration_step(tmp_path):
    frozen = sqlite3.connect(tmp_path / "frozen.sqlite")
    frozen.executescript(V1_DDL)
    code = sqlite3.connect(tmp_path / "code.sqlite")
    for statement in MIGRATIONS[0]:
        code.execute(statement)
    assert columns(frozen) == columns(code)


def test_migration_from_v1_keeps_data_and_closes_dead_sessions(tmp_path):
    path = tmp_path / "v1.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(V1_DDL)
    conn.execute("INSERT INTO patients VALUES ('P1', 1000.0)")
    conn.execute("INSERT INTO sessions(id, session_id, patient_id, started_at, ended_at, model_id, model_version) "
                 "VALUES (1, 's-ended', 'P1', 1000.0, 1600.0, 'm', '1')")
    conn.execute("INSERT INTO sessions(id, session_id, patient_id, started_at, ended_at, model_id, model_version) "
                 "VALUES (2, 's-killed', 'P1', 2000.0, NULL, 'm', '1')")
    for i in range(3):
        conn.execute("INSERT INTO points VALUES (1, ?, ?, ?, 0.5, -0.5, 0.9, '{}', 10, ?)",
                     (i, i * 2.0, i * 2.0 + 1, 1001.0 + i))
        conn.execute("INSERT INTO points VALUES (2, ?, ?, ?, -0.1, 0.3, 0.6, '{}', 10, ?)",
                     (i, i * 2.0, i * 2.0 + 1, 2010.0 + i))
    conn.execute("INSERT INTO marks(session, t, text, wall_time) VALUES (1, 3.0, 'laughs', 1003.0)")
    conn.commit()
    conn.close()

    with Store.open(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.recovered_sessions == ["s-killed"]
        rows = {s.session_id: s for s in store.sessions("P1")}
        assert rows["s-ended"].end_state == "clean" and rows["s-ended"].ended_at == 1600.0
        assert rows["s-killed"].end_state == "recovered"
        assert rows["s-killed"].ended_at == 2012.0  # its last point
        assert rows["s-ended"].points == 3 and rows["s-ended"].marks == 1
        assert store.mark_records("s-ended")[0]["text"] == "laughs"
        table = store.points(["s-ended", "s-killed"])
        assert len(table) == 6 and table.valence[:3].tolist() == [0.5] * 3
        store.set_baseline("P1", {"mean": [1, 2]}, "m")  # v2 features work on the migrated file
        assert store.get_baseline("P1") == {"mean": [1, 2]}
        assert store.integrity_check() == "ok"
        migrated = columns(store.conn)
    with Store.open(tmp_path / "fresh.sqlite") as fresh:
        assert columns(fresh.conn) == migrated  # a migrated file and a new one have the same schema


def test_migration_from_v1_on_either_backend(target, request):
    make_v1_store(target)
    with Store.open(target) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.recovered_sessions == ["s-killed"]
        rows = {s.session_id: s for s in store.sessions("P1")}
        assert rows["s-ended"].end_state == "clean" and rows["s-ended"].ended_at == 1600.0
        assert rows["s-killed"].end_state == "recovered" and rows["s-killed"].ended_at == 2012.0
        assert rows["s-killed"].audio_seconds == 5.0  # v3's step ran (the last point's end)
        assert rows["s-ended"].points == 3 and rows["s-ended"].marks == 1
        store.set_voiceprint("patient", "P1", _voiceprint())  # v4 features work on the migrated store
        assert store.voiceprint("patient", "P1", "enc") is not None
        assert store.integrity_check() == "ok"
        migrated = schema_of(store)
    fresh = target.with_name("fresh.sqlite") if not isinstance(target, str) else request.getfixturevalue(
        "pg_server").new_database()
    with Store.open(fresh) as store:
        assert schema_of(store) == migrated  # a migrated store and a new one have the same schema


def _voiceprint():
    from calibration.attribution import Voiceprint

    return Voiceprint(vector=np.array([0.6, 0.8]), n_segments=5, seconds=30.0, encoder="enc")


def test_two_openers_of_an_old_store_migrate_it_once(target, caplog):
    """Four threads open a version 1 store at once: every open succeeds and each step runs exactly once."""
    import logging

    make_v1_store(target)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []
    caplog.set_level(logging.INFO, logger="monitor.history.schema")

    def open_it() -> None:
        try:
            barrier.wait()
            Store.open(target, recover=False).close()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    steps = [r.getMessage() for r in caplog.records if "migrated to schema version" in r.getMessage()]
    assert sorted(int(m.rsplit(" ", 1)[1]) for m in steps) == list(range(2, SCHEMA_VERSION + 1)), steps
    with Store.open(target) as store:
        assert store.schema_version() == SCHEMA_VERSION and store.session("s-ended").points == 3


def test_sqlite_and_postgresql_have_the_same_schema(tmp_path, pg_url):
    """The PostgreSQL DDL is the SQLite steps translated: same tables, columns, nullability, keys; types mapped."""
    with Store.open(tmp_path / "m.sqlite") as lite, Store.open(pg_url, data_dir=tmp_path) as pg:
        a, b = schema_of(lite), schema_of(pg)
        assert a.keys() == b.keys()
        types = {"TEXT": "text", "REAL": "double precision", "INTEGER": "bigint"}
        for table in a:
            assert [(c[0], types[c[1]], c[2] or c[4] > 0, c[4]) for c in a[table]] == [
                (c[0], c[1], c[2], c[4]) for c in b[table]], table
        assert pg.conn.execute("SELECT version FROM mood_monitor_schema").fetchone()["version"] == SCHEMA_VERSION
        assert pg.conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"


def test_a_commit_that_fails_rolls_back_and_the_store_stays_usable(target, backend):
    import psycopg

    with Store.open(target) as store:
        with pytest.raises(sqlite3.IntegrityError if backend == "sqlite" else psycopg.IntegrityError):
            with store.transaction() as conn:
                if backend == "sqlite":
                    conn.execute("PRAGMA defer_foreign_keys = ON")  # the violation surfaces only at COMMIT
                conn.execute("INSERT INTO marks (session, t, text, wall_time) VALUES (999, 1.0, 'x', 0.0)")
        assert not store.conn.in_transaction
        with store.transaction() as conn:  # the next write works (it would fail inside a stuck transaction)
            conn.execute("INSERT INTO patients (patient_id, created_at) VALUES ('p1', 0.0)")
        assert store.conn.execute("SELECT COUNT(*) FROM marks").fetchone()[0] == 0


def test_newer_schema_is_refused(target, backend):
    with Store.open(target) as store:
        if backend == "sqlite":
            store.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        else:
            store.conn.execute("UPDATE mood_monitor_schema SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer"):
        Store.open(target)


def test_not_a_database(tmp_path):
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open"):
        Store.open(path)


def test_default_db_path(tmp_path, monkeypatch):
    monkeypatch.setenv("MOOD_MONITOR_DATA_DIR", str(tmp_path / "env"))
    assert default_db_path() == tmp_path / "env" / "mood-monitor.sqlite"
    assert default_db_path(tmp_path / "x") == tmp_path / "x" / "mood-monitor.sqlite"
    monkeypatch.delenv("MOOD_MONITOR_DATA_DIR")
    assert default_db_path().parts[-3:] == ("share", "mood-monitor", "mood-monitor.sqlite")


def run_sink(store: Store, sid: str, n: int, patient: str | None = "P1", keep_audio: bool = False,
             started_at: float = 1_700_000_000.0) -> list[Point]:
    sink = StoreSink(store, patient_id=patient, keep_audio=keep_audio)
    sink.start(session_info(sid, started_at, patient=None), heatmap=None)
    points = [make_point(i, i * 2.0, started_at + i * 2.0 + 1.5, v=i / 10) for i in range(n)]
    for p in points:
        sink.point(p)
        sink.segment_audio(p, np.full(int(16000 * p.duration), 0.25, dtype=np.float32))
    sink.mark(Mark(t=1.0, text="door slams", wall_time=started_at + 1.0))
    sink.close()
    assert sink.dropped == 0 and sink.write_errors == 0
    return points


def test_sink_stores_session_points_marks_and_a_clean_end(target, tmp_path):
    with Store.open(target) as store:
        assert store.conn is not None  # this thread's connection
        points = run_sink(store, "s1", 5)
        run_sink(store, "s2", 1)
        assert store.db.connection_count() == 1  # each finished writer thread closed its own connection; ours is left
        row = store.session("s1")
        assert row.patient_id == "P1" and row.end_state == "clean" and row.ended_at is not None
        assert row.model_id == "test-model@1+abc" and row.labels == ["neutral", "happy", "sad", "angry"]
        assert row.settings == {"vad": {"aggressiveness": 2}}
        assert row.points == 5 and row.speech_seconds == pytest.approx(7.5) and row.marks == 1
        stored = store.point_records("s1")
        for p, r in zip(points, stored, strict=True):
            assert r == {"index": p.index, "t_start": p.t_start, "t_end": p.t_end, "valence": p.valence,
                         "arousal": p.arousal, "confidence": p.confidence, "probabilities": p.probabilities,
                         "latency_ms": p.latency_ms, "wall_time": p.wall_time, "speaker": None,
                         "speaker_score": None}
        assert store.audio_records("s1") == []  # no audio unless asked
        assert not store.audio_root.exists()


def test_sink_keeps_only_counted_points_and_the_speech_per_voice(target, tmp_path):
    """Issue 14: another voice's point (counted False) and its audio are not stored; the speech per voice is."""
    from dataclasses import replace

    from monitor.live.events import Status

    with Store.open(target) as store:
        sink = StoreSink(store, patient_id="P1", keep_audio=True)
        sink.start(session_info("s1", 1_700_000_000.0, patient=None), heatmap=None)
        speakers = ["patient", "clinician", "unknown", "patient"]
        for i, who in enumerate(speakers):
            point = replace(make_point(i, i * 2.0, 1_700_000_000.0 + i * 2.0 + 1.5), speaker=who,
                            speaker_score=0.9, counted=who == "patient")
            sink.point(point)
            sink.segment_audio(point, np.full(16000, 0.25, dtype=np.float32))
        sink.status(Status(t=9.0, speech_active=False, paused=False, frame_queue=0, segment_queue=0, result_queue=0,
                           dropped_frames=0, failed_segments=0, segments=4, points=4, device="cpu",
                           speaker_seconds={"patient": 3.0, "clinician": 1.5, "unknown": 1.5}))
        sink.close()
        assert sink.uncounted_points == 2 and sink.dropped == 0
        stored = store.point_records("s1")
        assert [r["index"] for r in stored] == [0, 3] and {r["speaker"] for r in stored} == {"patient"}
        assert [r["index"] for r in store.audio_records("s1")] == [0, 3]
        assert store.speaker_seconds("s1") == {"patient": 3.0, "clinician": 1.5, "unknown": 1.5}


def test_sink_point_never_waits_for_the_disk(target, backend):
    """With the database locked by another writer, point() still returns at once; the queue bound holds."""
    import psycopg

    with Store.open(target) as store:
        if backend == "sqlite":
            blocker = sqlite3.connect(target, isolation_level=None)
            blocker.execute("BEGIN EXCLUSIVE")  # the writer thread cannot commit until this ends
        else:
            blocker = psycopg.connect(target, autocommit=True)
            blocker.execute("BEGIN")
            blocker.execute("LOCK TABLE points IN ACCESS EXCLUSIVE MODE")  # no point can be written until COMMIT
        sink = StoreSink(store, patient_id="P1", max_queue=50)
        sink.start(session_info("s-blocked", 1_700_000_000.0), heatmap=None)
        slowest = 0.0
        for i in range(200):
            t = time.perf_counter()
            sink.point(make_point(i, i * 2.0, 1_700_000_000.0 + i))
            slowest = max(slowest, time.perf_counter() - t)
        assert slowest < 0.2  # a blocked commit would take the 30 s busy timeout
        assert sink.dropped >= 200 - 50 - 1  # the bounded queue overflowed instead of growing
        blocker.execute("COMMIT")
        sink.close()
        stored = store.session("s-blocked").points
        assert stored == 200 - sink.dropped


def test_keep_audio_writes_flac_and_delete_removes_it(target, tmp_path):
    import soundfile as sf

    with Store.open(target) as store:
        run_sink(store, "s-audio", 3, keep_audio=True)
        records = store.audio_records("s-audio")
        assert [r["index"] for r in records] == [0, 1, 2]
        audio, sr = sf.read(tmp_path / records[1]["path"], dtype="float32")
        assert sr == 16000 and len(audio) == records[1]["samples"] == 24000
        np.testing.assert_allclose(audio, 0.25, atol=1 / 32768)
        folder = (tmp_path / records[0]["path"]).parent
        assert folder.is_dir()
        store.delete_sessions(["s-audio"])
        assert not folder.exists() and store.session("s-audio") is None


def test_sessions_without_patient_are_unassigned_until_assigned(target, tmp_path):
    with Store.open(target) as store:
        run_sink(store, "anon", 2, patient=None)
        assert store.session("anon").patient_id is None
        assert [p.patient_id for p in store.patients()] == [None]
        assert [s.session_id for s in store.sessions(unassigned=True)] == ["anon"]
        store.assign_session("anon", "P9")
        assert store.session("anon").patient_id == "P9"
        assert [(p.patient_id, p.sessions, p.points) for p in store.patients()] == [("P9", 1, 2)]
        with pytest.raises(KeyError):
            store.assign_session("nope", "P9")


def test_baselines_are_replaced_and_kept(target, tmp_path):
    with Store.open(target) as store:
        assert store.get_baseline("P1") is None
        store.set_baseline("P1", {"v": 1}, "model-a")
        store.set_baseline("P1", {"v": 2}, "model-a")
        store.set_baseline("P1", {"v": 3}, "model-b")
        assert store.get_baseline("P1", "model-a") == {"v": 2}
        assert store.get_baseline("P1", "model-b") == {"v": 3}
        assert store.get_baseline("P1") == {"v": 3}  # the latest, any model
        assert store.get_baseline("P1", "model-c") is None
        history = store.baseline_history("P1")
        assert [(h["model_id"], h["baseline"]["v"], h["replaced_at"] is None) for h in history] == [
            ("model-a", 1, False), ("model-a", 2, True), ("model-b", 3, True)]


def test_recovery_leaves_live_sessions_alone(target):
    path = target
    with Store.open(path) as store:
        store.begin_session(session_info("live", time.time()))  # written by this (live) process
        store.begin_session(session_info("dead", time.time() - 10))
        store.add_points("dead", [make_point(0, 0.0, time.time() - 5)])
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        writer = store.conn.execute("SELECT writer FROM sessions WHERE session_id='live'").fetchone()[0]
        host = writer.rpartition(":")[0]
        with store.transaction() as c:
            c.execute("UPDATE sessions SET writer = ? WHERE session_id = 'dead'", (f"{host}:{dead.stdout.strip()}",))
    with Store.open(path) as store:
        if os.name == "posix":
            assert store.recovered_sessions == ["dead"]
            assert store.session("dead").ended_at == pytest.approx(store.point_records("dead")[0]["wall_time"])
        assert store.session("live").end_state is None


def test_concurrent_readers_while_the_sink_writes(target):
    path = target
    with Store.open(path) as store:
        sink = StoreSink(store, patient_id="P1")
        sink.start(session_info("s", 1_700_000_000.0), heatmap=None)
        errors = []

        def read():
            try:
                with Store.open(path) as reader:
                    for _ in range(20):
                        reader.sessions("P1")
                        reader.points(["s"])
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        thread = threading.Thread(target=read)
        thread.start()
        for i in range(100):
            sink.point(make_point(i, i * 2.0, 1_700_000_000.0 + i))
        thread.join()
        sink.close()
        assert not errors and store.session("s").points == 100


# ---- export and delete (mood-monitor data) ---------------------------------------
def fill(path):
    with Store.open(path) as store:
        run_sink(store, "a1", 3, patient="ALPHA-7731")
        run_sink(store, "a2", 2, patient="ALPHA-7731", started_at=1_700_100_000.0)
        run_sink(store, "b1", 4, patient="BRAVO", started_at=1_700_200_000.0)
        store.set_baseline("ALPHA-7731", {"secret": "BASELINE-XYZZY"}, "m")
        with store.transaction() as c:
            c.execute("UPDATE marks SET text = 'ALPHA-MARK-QWERTY' "
                      "WHERE session = (SELECT id FROM sessions WHERE session_id = 'a1')")


def test_export_csv_and_json(target, tmp_path, capsys):
    db = target
    fill(db)
    assert data_cli.main(["--db", str(db), "export", "--patient", "ALPHA-7731", "--out", str(tmp_path / "x.json")]) == 0
    doc = json.loads((tmp_path / "x.json").read_text())
    assert doc["patient"] == "ALPHA-7731" and [s["session_id"] for s in doc["sessions"]] == ["a1", "a2"]
    assert [len(s["points"]) for s in doc["sessions"]] == [3, 2]
    assert doc["sessions"][0]["marks"][0]["text"] == "ALPHA-MARK-QWERTY"
    assert doc["baselines"][0]["baseline"] == {"secret": "BASELINE-XYZZY"}

    assert data_cli.main(["--db", str(db), "export", "--patient", "ALPHA-7731", "--out", str(tmp_path / "csv")]) == 0
    with open(tmp_path / "csv" / "points.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and {r["session_id"] for r in rows} == {"a1", "a2"}
    first = doc["sessions"][0]["points"][1]
    assert float(rows[1]["valence"]) == first["valence"] and float(rows[1]["t_end"]) == first["t_end"]
    with open(tmp_path / "csv" / "sessions.csv", newline="") as f:
        sessions = list(csv.DictReader(f))
    assert [s["points"] for s in sessions] == ["3", "2"] and sessions[0]["end_state"] == "clean"
    assert (tmp_path / "csv" / "marks.csv").read_text().count("ALPHA-MARK-QWERTY") == 1
    assert data_cli.main(["--db", str(db), "export", "--patient", "NOBODY", "--out", str(tmp_path / "n.json")]) == 2


def test_delete_needs_yes_and_leaves_no_trace(tmp_path, capsys):
    db = tmp_path / "m.sqlite"
    fill(db)
    assert data_cli.main(["--db", str(db), "delete", "--patient", "ALPHA-7731"]) == 1  # no --yes: nothing happens
    with Store.open(db) as store:
        assert len(store.sessions("ALPHA-7731")) == 2
    assert data_cli.main(["--db", str(db), "delete", "--patient", "ALPHA-7731", "--yes"]) == 0
    with Store.open(db) as store:
        assert [p.patient_id for p in store.patients()] == ["BRAVO"]
        assert store.sessions("ALPHA-7731") == [] and store.get_baseline("ALPHA-7731") is None
        assert store.session("b1").points == 4  # the other patient is untouched
        assert store.integrity_check() == "ok"
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("m.sqlite"))
    for secret in (b"ALPHA-7731", b"ALPHA-MARK-QWERTY", b"BASELINE-XYZZY"):
        assert secret not in raw, f"{secret!r} still in the database files"


def test_data_cli_lists(target, tmp_path, capsys):
    db = target
    fill(db)
    capsys.readouterr()
    assert data_cli.main(["--db", str(db), "patients"]) == 0
    out = capsys.readouterr().out
    assert "ALPHA-7731" in out and "BRAVO" in out
    assert data_cli.main(["--db", str(db), "sessions", "--patient", "BRAVO", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["session_id"] for r in rows] == ["b1"] and rows[0]["points"] == 4
    assert data_cli.main(["--db", str(db), "delete", "--session", "a2", "--yes"]) == 0
    assert data_cli.main(["--db", str(db), "check"]) == 0
    assert "integrity ok" in capsys.readouterr().out
    assert data_cli.main(["--db", str(tmp_path / "missing.sqlite"), "patients"]) == 2
    with pytest.raises(SystemExit) as exc:
        data_cli.main(["--help"])
    assert exc.value.code == 0 and "delete" in capsys.readouterr().out


def test_retime_session(target, tmp_path):
    with Store.open(target) as store:
        run_sink(store, "s", 3, started_at=1_700_000_000.0)
        before = store.point_records("s")
        store.retime_session("s", 1_600_000_000.0)
        after = store.point_records("s")
        shifts = [a["wall_time"] - b["wall_time"] for a, b in zip(after, before, strict=True)]
        assert shifts == pytest.approx([-1e8] * 3)
        assert store.session("s").started_at == 1_600_000_000.0
        store.retime_session("s", 1_500_000_000.0, as_live=True, duration=60.0)
        assert [p["wall_time"] for p in store.point_records("s")] == [1_500_000_000.0 + p["t_end"] for p in after]
        row = store.session("s")
        assert (row.started_at, row.ended_at) == (1_500_000_000.0, 1_500_000_060.0)
        assert [p["t_start"] for p in store.point_records("s")] == [p["t_start"] for p in before]


# ---- the sink's counters and the public write API ---------------------------------------------
def test_sink_counts_points_marks_and_audio_apart(target, tmp_path):
    """A full queue drops each kind into its own counter (marks and audio are not 'points dropped')."""
    with Store.open(target) as store:
        sink = StoreSink(store, patient_id="P1", keep_audio=True, max_queue=3, max_audio_pending=100)
        # no writer thread yet: the queue only fills
        p = make_point(0, 0.0, 1_700_000_000.0)
        for _ in range(5):
            sink.point(p)  # 3 fit
        for _ in range(4):
            sink.mark(Mark(t=1.0, text="x", wall_time=1_700_000_001.0))
        for _ in range(2):
            sink.segment_audio(p, np.zeros(160, dtype=np.float32))
        assert (sink.dropped_points, sink.dropped_marks, sink.dropped_audio) == (2, 4, 2)
        assert sink.dropped == sink.dropped_points
        assert sink._audio_pending == 0  # audio that could not be queued is not pending


def test_sink_counters_are_exact_under_concurrent_drops(target, tmp_path):
    with Store.open(target) as store:
        sink = StoreSink(store, patient_id="P1", max_queue=10)
        p = make_point(0, 0.0, 1_700_000_000.0)
        m = Mark(t=1.0, text="x", wall_time=1_700_000_001.0)

        def flood(n: int) -> None:
            for _ in range(n):
                sink.point(p)
                sink.mark(m)

        threads = [threading.Thread(target=flood, args=(3000,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sink.dropped_points + sink.dropped_marks == 2 * 4 * 3000 - 10


def test_sink_counts_everything_when_the_session_cannot_be_created(target, monkeypatch):
    with Store.open(target) as store:
        def refuse(*args, **kwargs):
            raise store.errors[0]("disk I/O error")  # the backend driver's own error class

        monkeypatch.setattr(store, "begin_session", refuse)
        sink = StoreSink(store, patient_id="P1", keep_audio=True)
        sink.start(session_info("s-lost", 1_700_000_000.0))
        p = make_point(0, 0.0, 1_700_000_000.0)
        sink.point(p)
        sink.mark(Mark(t=1.0, text="x", wall_time=1_700_000_001.0))
        sink.segment_audio(p, np.zeros(160, dtype=np.float32))
        sink.close()
        assert (sink.dropped_points, sink.dropped_marks, sink.dropped_audio) == (1, 1, 1)
        assert sink.write_errors == 3 and sink._audio_pending == 0
        assert store.session("s-lost") is None


def test_write_batch_commits_points_marks_and_a_heartbeat(target, tmp_path):
    with Store.open(target) as store:
        store.begin_session(session_info("s", 1_700_000_000.0))
        store.conn.execute("UPDATE sessions SET heartbeat_at = 0")
        store.write_batch("s", [make_point(i, i * 2.0, 1_700_000_000.0 + i) for i in range(3)],
                          [Mark(t=1.0, text="sigh", wall_time=1_700_000_001.0)])
        row = store.session("s")
        assert (row.points, row.marks) == (3, 1)
        assert store.conn.execute("SELECT heartbeat_at FROM sessions").fetchone()["heartbeat_at"] > 0
        store.add_points("s", [make_point(3, 6.0, 1_700_000_003.0)])  # imports: no heartbeat stamp
        with pytest.raises(KeyError, match="no session"):
            store.write_batch("nope", [make_point(0, 0.0, 0.0)])


def test_has_patient_and_named_rows(target, tmp_path):
    with Store.open(target) as store:
        assert not store.has_patient("P1") and store.patient_ids() == []
        run_sink(store, "s1", 2, patient="P1")
        store.set_baseline("P0", {"v": 1}, "m")
        assert store.has_patient("P1") and store.has_patient("P0") and not store.has_patient("P2")
        assert store.patient_ids() == ["P0", "P1"] and store.patient_ids(limit=1) == ["P0"]
        [p0, p1] = store.patients()
        assert (p1.patient_id, p1.sessions, p1.points) == ("P1", 1, 2) and p1.first_session == p1.last_session
        assert (p0.patient_id, p0.sessions, p0.points, p0.first_session) == ("P0", 0, 0, None)
        table = store.points(["s1"])
        assert table.session.tolist() == ["s1", "s1"] and table.index.tolist() == [0, 1]
        assert table.t_end.tolist() == [1.5, 3.5] and table.valence.tolist() == [0.0, 0.1]


# ---- PostgreSQL's own counterparts ---------------------------------------------------------
def test_postgresql_delete_leaves_no_trace_in_the_table_files(pg_server, pg_url, tmp_path, monkeypatch, capsys):
    """After `data delete` (DELETE, VACUUM FULL, CHECKPOINT) the patient's id, marks and baseline are in no heap,
    index or TOAST file of the database; before it they were (so the search can find them)."""
    monkeypatch.setenv("MOOD_MONITOR_DATA_DIR", str(tmp_path))
    fill(pg_url)
    secrets = (b"ALPHA-7731", b"ALPHA-MARK-QWERTY", b"BASELINE-XYZZY")

    def raw() -> bytes:
        return b"".join(p.read_bytes() for p in pg_server.relation_files(pg_url))

    pg_server.admin("CHECKPOINT")
    before = raw()
    assert all(secret in before for secret in secrets)
    assert data_cli.main(["--db", pg_url, "delete", "--patient", "ALPHA-7731", "--yes"]) == 0
    with Store.open(pg_url) as store:
        assert [p.patient_id for p in store.patients()] == ["BRAVO"]
        assert store.session("b1").points == 4 and store.integrity_check() == "ok"
    after = raw()
    assert b"BRAVO" in after  # the files searched are the live ones
    for secret in secrets:
        assert secret not in after, f"{secret!r} still in the table files"


def test_a_password_in_the_url_never_appears_in_messages_or_logs(pg_server, pg_url, tmp_path, caplog, capsys):
    import logging
    from urllib.parse import urlsplit

    from monitor.history.target import display_name

    password = "Zebra-Pw-93817"
    db = urlsplit(pg_url).path.lstrip("/")
    pg_server.admin(f"CREATE ROLE clinic LOGIN PASSWORD '{password}'")
    try:
        pg_server.admin(f"GRANT ALL ON SCHEMA public TO clinic; ALTER DATABASE {db} OWNER TO clinic", database=db)
        caplog.set_level(logging.DEBUG)
        good = pg_server.url(db, user="clinic", password=password, tcp=True)
        assert display_name(good) == f"postgresql://clinic@127.0.0.1:{pg_server.port}/{db}"
        with Store.open(good, data_dir=tmp_path) as store:  # the right password: it works, and is never shown
            run_sink(store, "s1", 2, patient="P1")
            assert password not in str(store.path)
        assert data_cli.main(["--db", good, "check"]) == 0
        assert data_cli.main(["--db", good, "delete", "--patient", "NOBODY", "--yes"]) == 2
        bad = [pg_server.url(db, user="clinic", password=password + "x", tcp=True),
               pg_server.url("no_such_db", user="clinic", password=password, tcp=True),
               f"postgresql://clinic@127.0.0.1:{pg_server.port}/{db}?password={password}x&connect_timeout=5"]
        for url in bad:
            with pytest.raises(StoreError, match="cannot open the store") as exc:
                Store.open(url, data_dir=tmp_path)
            assert password not in str(exc.value) and "clinic@127.0.0.1" in str(exc.value)
            assert data_cli.main(["--db", url, "patients"]) == 2
        out = capsys.readouterr()
        assert "integrity ok" in out.out and "clinic@127.0.0.1" in out.out + out.err
        assert password not in out.out + out.err
        assert password not in caplog.text
    finally:
        pg_server.admin(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        pg_server.admin("DROP ROLE clinic")


def test_postgresql_without_the_driver_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if psycopg were not installed
    with pytest.raises(StoreError, match=r"pip install 'mood-monitor\[clinic\]'"):
        Store.open("postgresql://monitor@db.example/mood", data_dir=tmp_path)
    assert data_cli.main(["--db", "postgres://monitor@db.example/mood", "patients"]) == 2


def test_postgresql_durability_settings_are_checked_at_open(pg_server, pg_url, tmp_path, caplog):
    """synchronous_commit = off is switched back on for the store's connections (loudly); fsync = off is refused."""
    import logging
    from urllib.parse import urlsplit

    db = urlsplit(pg_url).path.lstrip("/")
    pg_server.admin(f"ALTER DATABASE {db} SET synchronous_commit = off")
    caplog.set_level(logging.WARNING)
    with Store.open(pg_url, data_dir=tmp_path) as store:
        assert "synchronous_commit = off" in caplog.text
        assert store.conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"
        thread_value: list[str] = []
        worker = threading.Thread(target=lambda: thread_value.append(
            store.conn.execute("SHOW synchronous_commit").fetchone()[0]))
        worker.start()
        worker.join()
        assert thread_value == ["on"]  # every thread's connection, not only the first
    pg_server.admin("ALTER SYSTEM SET fsync = off")
    pg_server.admin("SELECT pg_reload_conf()")
    try:
        time.sleep(0.5)
        with pytest.raises(StoreError, match="fsync = off"):
            Store.open(pg_url, data_dir=tmp_path)
    finally:
        pg_server.admin("ALTER SYSTEM RESET fsync")
        pg_server.admin("SELECT pg_reload_conf()")
        time.sleep(0.5)
    assert pg_server.admin("SHOW fsync") == [("on",)]


def test_reading_tools_refuse_an_empty_postgresql_database(pg_url, capsys):
    """Like a missing SQLite file: `data` and `report` do not create a store where there is none."""
    from monitor.history import report

    assert data_cli.main(["--db", pg_url, "patients"]) == 2
    assert "no store in" in capsys.readouterr().err
    assert report.main(["--db", pg_url, "--patient", "P1", "--out", "x.json"]) == 2
    with Store.open(pg_url) as store:  # the monitor (Store.open) creates it
        assert store.schema_version() == SCHEMA_VERSION
