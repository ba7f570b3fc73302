"""The longitudinal store: every session's points, kept per patient, in one SQLite file.

Why SQLite: it is in the standard library, needs no server beside a therapy
room's laptop, and in WAL mode a committed transaction survives the process
being killed (``synchronous=FULL`` also survives a power cut). The dashboard
and reports read while the monitor writes.

Layout (``docs/store.md`` has the full schema)::

    patients  1──n  sessions  1──n  points
                              1──n  marks
                              1──n  segment_audio  (only with --keep-audio: FLAC files next to the db)
    patients  1──n  baselines (speaker baselines from enrolment; replaced ones are kept)

The schema version lives in ``PRAGMA user_version``; ``MIGRATIONS`` holds
ordered SQL steps and ``Store.open`` applies the missing ones in one
transaction each. A session that never got an end time (the monitor was
killed) is closed on the next open, with the end set to its last point.

``StoreSink`` is the pipeline's output: the dispatch thread only puts events
on a bounded queue; a writer thread commits each batch as soon as it arrives
(milliseconds after the point), so SIGKILL loses at most what was still in
flight.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from calibration.speaker import SpeakerBaseline
from monitor.model.base import SAMPLE_RATE
from monitor.live.events import Mark, Point, SessionInfo, Status

log = logging.getLogger(__name__)

DB_FILENAME = "mood-monitor.sqlite"
DATA_DIR_ENV = "MOOD_MONITOR_DATA_DIR"
AUDIO_DIR = "audio"  # relative to the database's folder
#: A session whose writer has not been heard from for this long is treated as dead.
STALE_AFTER_S = 120.0
HEARTBEAT_S = 2.0

# ---- schema ---------------------------------------------------------------------------------
# Each entry moves the schema from version i to i+1. Never edit a released step: add a new one.
MIGRATIONS: list[list[str]] = [
    # v1: patients, sessions, points, marks.
    [
        """CREATE TABLE patients (
            patient_id TEXT PRIMARY KEY,          -- pseudonymous id; no names needed
            created_at REAL NOT NULL              -- unix time
        )""",
        """CREATE TABLE sessions (
            id INTEGER PRIMARY KEY,
            session_id TEXT NOT NULL UNIQUE,
            patient_id TEXT REFERENCES patients(patient_id) ON DELETE CASCADE,  -- NULL: unassigned
            started_at REAL NOT NULL,
            ended_at REAL,                        -- NULL while running (or if the monitor died)
            model_id TEXT NOT NULL,
            model_version TEXT NOT NULL,
            device TEXT NOT NULL DEFAULT '',
            source TEXT NOT NULL DEFAULT '',
            labels TEXT NOT NULL DEFAULT '[]',    -- JSON list
            settings TEXT NOT NULL DEFAULT '{}'   -- JSON object
        )""",
        """CREATE TABLE points (
            session INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,                 -- segment index within the session
            t_start REAL NOT NULL,                -- session time, seconds
            t_end REAL NOT NULL,
            valence REAL NOT NULL,
            arousal REAL NOT NULL,
            confidence REAL NOT NULL,
            probabilities TEXT NOT NULL DEFAULT '{}',  -- JSON {label: p} (top classes)
            latency_ms REAL,
            wall_time REAL NOT NULL,              -- unix time the point was emitted
            PRIMARY KEY (session, idx)
        ) WITHOUT ROWID""",
        """CREATE TABLE marks (
            id INTEGER PRIMARY KEY,
            session INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            t REAL NOT NULL,
            text TEXT NOT NULL,
            wall_time REAL NOT NULL,
            source TEXT NOT NULL DEFAULT ''
        )""",
    ],
    # v2: how a session ended (and who is writing it), speaker baselines, kept audio, indexes.
    [
        "ALTER TABLE sessions ADD COLUMN end_state TEXT",     # NULL running, 'clean', 'recovered'
        "ALTER TABLE sessions ADD COLUMN writer TEXT",        # host:pid of the writing process
        "ALTER TABLE sessions ADD COLUMN heartbeat_at REAL",  # last sign of life from the writer
        "UPDATE sessions SET end_state = 'clean' WHERE ended_at IS NOT NULL",
        "CREATE INDEX sessions_by_patient ON sessions(patient_id, started_at)",
        "CREATE INDEX marks_by_session ON marks(session, t)",
        """CREATE TABLE baselines (
            id INTEGER PRIMARY KEY,
            patient_id TEXT NOT NULL REFERENCES patients(patient_id) ON DELETE CASCADE,
            model_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            replaced_at REAL,                     -- NULL: the current one for (patient, model)
            baseline TEXT NOT NULL                -- JSON object
        )""",
        "CREATE INDEX baselines_by_patient ON baselines(patient_id, model_id, created_at)",
        """CREATE TABLE segment_audio (
            session INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            path TEXT NOT NULL,                   -- relative to the database's folder
            sample_rate INTEGER NOT NULL,
            samples INTEGER NOT NULL,
            PRIMARY KEY (session, idx)
        ) WITHOUT ROWID""",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(RuntimeError):
    """The store cannot be used (newer schema, unreadable file); the message says which."""


# ---- rows -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PatientRow:
    patient_id: str | None  # None: sessions recorded without --patient
    created_at: float | None
    sessions: int
    points: int
    first_session: float | None
    last_session: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SessionRow:
    session_id: str
    patient_id: str | None
    started_at: float
    ended_at: float | None
    end_state: str | None  # None: still running (or not yet recovered), 'clean', 'recovered'
    model_id: str
    model_version: str
    device: str
    source: str
    labels: list[str]
    settings: dict[str, Any]
    points: int
    speech_seconds: float
    marks: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PointTable:
    """Points as columns (what aggregation wants); ``session`` holds session ids."""

    session: np.ndarray  # str objects
    index: np.ndarray
    t_start: np.ndarray
    t_end: np.ndarray
    valence: np.ndarray
    arousal: np.ndarray
    confidence: np.ndarray
    wall_time: np.ndarray

    def __len__(self) -> int:
        return len(self.valence)

    @property
    def duration(self) -> np.ndarray:
        return np.maximum(self.t_end - self.t_start, 0.0)

    def select(self, mask: np.ndarray) -> "PointTable":
        return PointTable(**{k: v[mask] for k, v in self.__dict__.items()})

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[Any]]) -> "PointTable":
        cols = list(zip(*rows)) if rows else [()] * 8
        f = lambda c: np.asarray(c, dtype=np.float64)  # noqa: E731
        return cls(session=np.asarray(cols[0], dtype=object), index=np.asarray(cols[1], dtype=np.int64),
                   t_start=f(cols[2]), t_end=f(cols[3]), valence=f(cols[4]), arousal=f(cols[5]),
                   confidence=f(cols[6]), wall_time=f(cols[7]))


# ---- paths ----------------------------------------------------------------------------------
def default_data_dir() -> Path:
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "mood-monitor"


def default_db_path(data_dir: str | Path | None = None) -> Path:
    """DATA_DIR/mood-monitor.sqlite, DATA_DIR being ``data_dir``, $MOOD_MONITOR_DATA_DIR or ~/.local/share/mood-monitor."""
    return (Path(data_dir).expanduser() if data_dir else default_data_dir()) / DB_FILENAME


def open_existing(db: str | Path | None, data_dir: str | Path | None = None) -> "Store":
    """Open a store that must already exist (the reading CLIs), raising ``StoreError`` that names the path."""
    path = Path(db) if db else default_db_path(data_dir)
    if not path.exists():
        raise StoreError(f"no store at {path} (give --db or --data-dir)")
    return Store.open(path)


def _writer_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _writer_alive(writer: str | None) -> bool | None:
    """True/False when the writer ran on this host and its pid can be checked; None when unknown."""
    if not writer or ":" not in writer:
        return None
    host, _, pid_text = writer.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit() or os.name != "posix":
        return None  # on Windows os.kill(pid, 0) would terminate the process: rely on the heartbeat
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---- the store ------------------------------------------------------------------------------
class Store:
    """One SQLite database. Thread-safe: each thread gets its own connection (WAL lets them overlap)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.recovered_sessions: list[str] = []

    @classmethod
    def open(cls, path: str | Path, *, recover: bool = True) -> "Store":
        """Open (creating folder and file if needed), migrate to the current schema, close dead sessions."""
        path = Path(path).expanduser()
        if path.is_dir():
            raise StoreError(f"{path} is a folder; give the database file (e.g. {path / DB_FILENAME})")
        if not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # clinical data: owner only
        new_file = not path.exists()
        store = cls(path)
        try:
            conn = store.conn
            if new_file:
                try:
                    os.chmod(path, 0o600)
                except OSError:  # pragma: no cover - e.g. a filesystem without permissions
                    pass
            store._migrate(conn)
        except sqlite3.DatabaseError as exc:
            store.close()
            raise StoreError(f"cannot open the store {path}: {exc}") from exc
        if recover:
            store.recovered_sessions = store.recover_unclean()
        return store

    # -- connections
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 30000")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("the store %s is not in WAL mode (%s); readers may wait for the writer", self.path, mode)
        conn.execute("PRAGMA synchronous = FULL")  # a committed point survives a crash and a power cut
        conn.execute("PRAGMA foreign_keys = ON")
        with self._lock:
            self._all.append(conn)
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (created on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    @contextmanager
    def transaction(self, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) on this thread's connection."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            yield conn
            conn.execute("COMMIT")  # inside: a COMMIT that fails (full disk) must roll back too
        except BaseException:
            if conn.in_transaction:  # SQLite may have rolled back by itself (I/O error); keep the original error
                conn.execute("ROLLBACK")
            raise

    def release_thread_connection(self) -> None:
        """Close the calling thread's connection (a thread that is about to end)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            return
        self._local.conn = None
        with self._lock:
            self._all = [c for c in self._all if c is not conn]
        conn.close()

    def close(self) -> None:
        """Close every thread's connection (checkpointing the WAL into the main file)."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:  # pragma: no cover
                pass
        self._local = threading.local()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def audio_root(self) -> Path:
        return self.path.parent / AUDIO_DIR

    # -- schema
    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        created = version == 0
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}, newer than this program knows "
                             f"({SCHEMA_VERSION}); upgrade mood-monitor")
        while version < SCHEMA_VERSION:
            with self.transaction() as c:
                # Re-read inside the write lock: another process may have migrated meanwhile.
                version = int(c.execute("PRAGMA user_version").fetchone()[0])
                if version >= SCHEMA_VERSION:
                    break
                for statement in MIGRATIONS[version]:
                    c.execute(statement)
                c.execute(f"PRAGMA user_version = {version + 1}")
            version += 1
            if not created:
                log.info("store %s migrated to schema version %d", self.path, version)
        if created:
            log.info("created the store %s (schema version %d)", self.path, SCHEMA_VERSION)

    # -- writing (used by StoreSink's writer thread; usable directly for imports and tests)
    def ensure_patient(self, patient_id: str, conn: sqlite3.Connection | None = None) -> None:
        (conn or self.conn).execute("INSERT OR IGNORE INTO patients(patient_id, created_at) VALUES (?, ?)",
                                    (patient_id, time.time()))

    def begin_session(self, session: SessionInfo, patient_id: str | None = None) -> int:
        """Insert the session (and its patient); returns its row id. Idempotent for the same session id."""
        patient = patient_id if patient_id is not None else session.patient_id
        with self.transaction() as c:
            if patient is not None:
                self.ensure_patient(patient, c)
            c.execute(
                "INSERT OR IGNORE INTO sessions(session_id, patient_id, started_at, model_id, model_version, device,"
                " source, labels, settings, writer, heartbeat_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (session.session_id, patient, float(session.started_at), session.model_id, session.model_version,
                 str(session.device), session.source, json.dumps(list(session.labels)),
                 json.dumps(session.settings, default=str), _writer_id(), time.time()),
            )
            return int(c.execute("SELECT id FROM sessions WHERE session_id = ?", (session.session_id,)).fetchone()[0])

    def _session_rowid(self, session_id: str, conn: sqlite3.Connection | None = None) -> int:
        row = (conn or self.conn).execute("SELECT id FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
        if row is None:
            raise KeyError(f"no session {session_id!r} in {self.path}")
        return int(row[0])

    @staticmethod
    def _point_row(rowid: int, p: Point) -> tuple:
        return (rowid, int(p.index), float(p.t_start), float(p.t_end), float(p.valence), float(p.arousal),
                float(p.confidence), json.dumps(p.probabilities), float(p.latency_ms), float(p.wall_time))

    def add_points(self, session_id: str, points: Sequence[Point]) -> None:
        with self.transaction() as c:
            self._insert_points(c, self._session_rowid(session_id, c), points)

    @staticmethod
    def _insert_points(c: sqlite3.Connection, rowid: int, points: Sequence[Point]) -> None:
        c.executemany("INSERT OR REPLACE INTO points VALUES (?,?,?,?,?,?,?,?,?,?)",
                      [Store._point_row(rowid, p) for p in points])

    @staticmethod
    def _insert_marks(c: sqlite3.Connection, rowid: int, marks: Sequence[Mark]) -> None:
        c.executemany("INSERT INTO marks(session, t, text, wall_time, source) VALUES (?,?,?,?,?)",
                      [(rowid, float(m.t), m.text, float(m.wall_time), m.source) for m in marks])

    def end_session(self, session_id: str, ended_at: float | None = None, state: str = "clean") -> None:
        with self.transaction() as c:
            c.execute("UPDATE sessions SET ended_at = ?, end_state = ?, heartbeat_at = ? WHERE session_id = ?",
                      (float(ended_at if ended_at is not None else time.time()), state, time.time(), session_id))

    def recover_unclean(self, stale_after_s: float = STALE_AFTER_S) -> list[str]:
        """Close sessions whose writer died (no end time): end = their last point. Returns their ids.

        A session still being written by a live process (checked by pid on this
        host, else by a heartbeat newer than ``stale_after_s``) is left alone.
        """
        now = time.time()
        rows = self.conn.execute("SELECT id, session_id, writer, heartbeat_at, started_at FROM sessions "
                                 "WHERE ended_at IS NULL").fetchall()
        closed = []
        for rowid, session_id, writer, heartbeat_at, started_at in rows:
            alive = _writer_alive(writer)
            silent_for = now - (heartbeat_at or started_at)
            if alive is True and silent_for < 86_400:  # a live writer (pid reuse aside) may just be paused
                continue
            if alive is None and silent_for < stale_after_s:
                continue
            with self.transaction() as c:
                last = c.execute("SELECT MAX(wall_time) FROM points WHERE session = ?", (rowid,)).fetchone()[0]
                c.execute("UPDATE sessions SET ended_at = ?, end_state = 'recovered' WHERE id = ? AND ended_at IS NULL",
                          (float(last if last is not None else started_at), rowid))
            closed.append(session_id)
            log.warning("session %s had not been closed (the monitor stopped abruptly); closed at its last point",
                        session_id)
        return closed

    def retime_session(self, session_id: str, started_at: float, *, as_live: bool = False,
                       duration: float | None = None) -> None:
        """Move a session to another start time, shifting every stored wall-clock time with it.

        For imports and demos (the example report replays clips as if on earlier
        days). ``as_live``: a fast replay's wall times are squeezed, so set each
        point's wall time to start + its session time and the end to start +
        ``duration`` (default: the last point's end), as a live session would have had.
        Session times (t_start/t_end) never change.
        """
        with self.transaction() as c:
            rowid = self._session_rowid(session_id, c)
            old = c.execute("SELECT started_at FROM sessions WHERE id = ?", (rowid,)).fetchone()[0]
            delta = float(started_at) - float(old)
            c.execute("UPDATE sessions SET started_at = started_at + ?, ended_at = ended_at + ?, "
                      "heartbeat_at = heartbeat_at + ? WHERE id = ?", (delta, delta, delta, rowid))
            c.execute("UPDATE marks SET wall_time = wall_time + ? WHERE session = ?", (delta, rowid))
            if not as_live:
                c.execute("UPDATE points SET wall_time = wall_time + ? WHERE session = ?", (delta, rowid))
                return
            c.execute("UPDATE points SET wall_time = ? + t_end WHERE session = ?", (float(started_at), rowid))
            c.execute("UPDATE marks SET wall_time = ? + t WHERE session = ?", (float(started_at), rowid))
            if duration is None:
                duration = c.execute("SELECT COALESCE(MAX(t_end), 0) FROM points WHERE session = ?", (rowid,)).fetchone()[0]
            c.execute("UPDATE sessions SET ended_at = ? WHERE id = ? AND ended_at IS NOT NULL",
                      (float(started_at) + float(duration), rowid))

    def add_segment_audio(self, session_id: str, index: int, audio: np.ndarray,
                          sample_rate: int = SAMPLE_RATE) -> Path:
        """Write one segment's audio as 16-bit FLAC under audio/<session>/ and record it."""
        import soundfile as sf

        rel = Path(AUDIO_DIR) / _safe_name(session_id) / f"{int(index):06d}.flac"
        path = self.path.parent / rel
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)
        sf.write(str(path), data, sample_rate, format="FLAC", subtype="PCM_16")
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO segment_audio VALUES (?,?,?,?,?)",
                      (self._session_rowid(session_id, c), int(index), rel.as_posix(), int(sample_rate), len(data)))
        return path

    # -- baselines (enrolment)
    def set_baseline(self, patient_id: str, baseline_json: dict[str, Any], model_id: str) -> None:
        """Make ``baseline_json`` the patient's current baseline for ``model_id``; the old one is kept as replaced."""
        text = json.dumps(baseline_json)
        now = time.time()
        with self.transaction() as c:
            self.ensure_patient(patient_id, c)
            c.execute("UPDATE baselines SET replaced_at = ? WHERE patient_id = ? AND model_id = ? AND replaced_at IS NULL",
                      (now, patient_id, model_id))
            c.execute("INSERT INTO baselines(patient_id, model_id, created_at, baseline) VALUES (?,?,?,?)",
                      (patient_id, model_id, now, text))

    def get_baseline(self, patient_id: str, model_id: str | None = None) -> dict[str, Any] | None:
        """The current baseline for ``model_id`` (any model's latest when None), or None."""
        sql = "SELECT baseline FROM baselines WHERE patient_id = ? AND replaced_at IS NULL"
        args: list[Any] = [patient_id]
        if model_id is not None:
            sql += " AND model_id = ?"
            args.append(model_id)
        row = self.conn.execute(sql + " ORDER BY created_at DESC, id DESC LIMIT 1", args).fetchone()
        return json.loads(row[0]) if row else None

    def current_baseline(self, patient_id: str, model_id: str) -> SpeakerBaseline | None:
        """The patient's enrolment baseline for this exact model, or None (population statistics are used then)."""
        data = self.get_baseline(patient_id, model_id)
        if data is not None:
            return SpeakerBaseline.from_json(data)
        if self.get_baseline(patient_id) is not None:
            log.warning("patient %s was enrolled with another model; enrol again (--enroll) to calibrate %s",
                        patient_id, model_id)
        return None

    def baseline_history(self, patient_id: str) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT model_id, created_at, replaced_at, baseline FROM baselines "
                                 "WHERE patient_id = ? ORDER BY created_at, id", (patient_id,)).fetchall()
        return [{"model_id": m, "created_at": c, "replaced_at": r, "baseline": json.loads(b)} for m, c, r, b in rows]

    # -- reading
    def patients(self) -> list[PatientRow]:
        """Every patient, plus one row with ``patient_id=None`` when unassigned sessions exist."""
        rows = self.conn.execute(
            """SELECT p.patient_id, p.created_at, COUNT(s.id), COALESCE(SUM(
                   (SELECT COUNT(*) FROM points WHERE session = s.id)), 0), MIN(s.started_at), MAX(s.started_at)
               FROM patients p LEFT JOIN sessions s ON s.patient_id = p.patient_id
               GROUP BY p.patient_id ORDER BY p.patient_id""").fetchall()
        out = [PatientRow(*r) for r in rows]
        un = self.conn.execute(
            """SELECT COUNT(*), COALESCE(SUM((SELECT COUNT(*) FROM points WHERE session = s.id)), 0),
                      MIN(started_at), MAX(started_at) FROM sessions s WHERE patient_id IS NULL""").fetchone()
        if un[0]:
            out.append(PatientRow(None, None, *un))
        return out

    def sessions(self, patient_id: str | None = None, *, unassigned: bool = False, start: float | None = None,
                 end: float | None = None, session_ids: Sequence[str] | None = None) -> list[SessionRow]:
        """Sessions, oldest first: all, one patient's, the unassigned ones, and/or started in [start, end)."""
        where, args = [], []
        if unassigned:
            where.append("s.patient_id IS NULL")
        elif patient_id is not None:
            where.append("s.patient_id = ?")
            args.append(patient_id)
        if start is not None:
            where.append("s.started_at >= ?")
            args.append(float(start))
        if end is not None:
            where.append("s.started_at < ?")
            args.append(float(end))
        if session_ids is not None:
            where.append(f"s.session_id IN ({','.join('?' * len(session_ids))})")
            args.extend(session_ids)
        sql = ("""SELECT s.session_id, s.patient_id, s.started_at, s.ended_at, s.end_state, s.model_id,
                         s.model_version, s.device, s.source, s.labels, s.settings,
                         (SELECT COUNT(*) FROM points WHERE session = s.id),
                         (SELECT COALESCE(SUM(MAX(t_end - t_start, 0)), 0) FROM points WHERE session = s.id),
                         (SELECT COUNT(*) FROM marks WHERE session = s.id)
                  FROM sessions s""" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY s.started_at, s.session_id")
        out = []
        for r in self.conn.execute(sql, args).fetchall():
            out.append(SessionRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], json.loads(r[9] or "[]"),
                                  json.loads(r[10] or "{}"), r[11], float(r[12]), r[13]))
        return out

    def session(self, session_id: str) -> SessionRow | None:
        rows = self.sessions(session_ids=[session_id])
        return rows[0] if rows else None

    def points(self, session_ids: Sequence[str]) -> PointTable:
        """The points of these sessions, ordered by session start then segment index."""
        if not session_ids:
            return PointTable.from_rows([])
        rows: list[tuple] = []
        ids = list(session_ids)
        for i in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
            chunk = ids[i:i + 500]
            rows += self.conn.execute(
                f"""SELECT s.session_id, p.idx, p.t_start, p.t_end, p.valence, p.arousal, p.confidence, p.wall_time
                    FROM points p JOIN sessions s ON s.id = p.session
                    WHERE s.session_id IN ({','.join('?' * len(chunk))})
                    ORDER BY s.started_at, s.session_id, p.idx""", chunk).fetchall()
        return PointTable.from_rows(rows)

    def point_records(self, session_id: str) -> list[dict[str, Any]]:
        """A session's points as dicts (every stored field), for export."""
        rowid = self._session_rowid(session_id)
        rows = self.conn.execute("SELECT idx, t_start, t_end, valence, arousal, confidence, probabilities, latency_ms, "
                                 "wall_time FROM points WHERE session = ? ORDER BY idx", (rowid,)).fetchall()
        return [{"index": r[0], "t_start": r[1], "t_end": r[2], "valence": r[3], "arousal": r[4], "confidence": r[5],
                 "probabilities": json.loads(r[6] or "{}"), "latency_ms": r[7], "wall_time": r[8]} for r in rows]

    def mark_records(self, session_id: str) -> list[dict[str, Any]]:
        rowid = self._session_rowid(session_id)
        rows = self.conn.execute("SELECT t, text, wall_time, source FROM marks WHERE session = ? ORDER BY t, id",
                                 (rowid,)).fetchall()
        return [{"t": r[0], "text": r[1], "wall_time": r[2], "source": r[3]} for r in rows]

    def audio_records(self, session_id: str) -> list[dict[str, Any]]:
        rowid = self._session_rowid(session_id)
        rows = self.conn.execute("SELECT idx, path, sample_rate, samples FROM segment_audio WHERE session = ? "
                                 "ORDER BY idx", (rowid,)).fetchall()
        return [{"index": r[0], "path": r[1], "sample_rate": r[2], "samples": r[3]} for r in rows]

    # -- data management
    def assign_session(self, session_id: str, patient_id: str) -> None:
        """Give a session recorded without --patient (or with a wrong one) to ``patient_id``."""
        with self.transaction() as c:
            self._session_rowid(session_id, c)
            self.ensure_patient(patient_id, c)
            c.execute("UPDATE sessions SET patient_id = ? WHERE session_id = ?", (patient_id, session_id))

    def delete_sessions(self, session_ids: Sequence[str]) -> int:
        """Delete sessions with their points, marks and audio files; freed pages are overwritten."""
        return self._delete(session_ids, patient_id=None)

    def delete_patient(self, patient_id: str) -> int:
        """Delete everything about a patient (sessions, points, marks, audio, baselines, the id itself).

        ``secure_delete`` zeroes the freed pages and the WAL is truncated, so the
        data does not linger in the file. Returns the number of sessions deleted.
        """
        exists = self.conn.execute("SELECT 1 FROM patients WHERE patient_id = ?", (patient_id,)).fetchone()
        ids = [r.session_id for r in self.sessions(patient_id)]
        if not exists and not ids:
            raise KeyError(f"no patient {patient_id!r} in {self.path}")
        return self._delete(ids, patient_id=patient_id)

    def _delete(self, session_ids: Sequence[str], patient_id: str | None) -> int:
        conn = self.conn
        conn.execute("PRAGMA secure_delete = ON")
        audio_dirs = []
        try:
            with self.transaction() as c:
                for sid in session_ids:
                    rowid = self._session_rowid(sid, c)
                    audio_dirs.append(self.audio_root / _safe_name(sid))
                    for table in ("points", "marks", "segment_audio"):
                        c.execute(f"DELETE FROM {table} WHERE session = ?", (rowid,))
                    c.execute("DELETE FROM sessions WHERE id = ?", (rowid,))
                if patient_id is not None:
                    c.execute("DELETE FROM baselines WHERE patient_id = ?", (patient_id,))
                    c.execute("DELETE FROM patients WHERE patient_id = ?", (patient_id,))
        finally:
            conn.execute("PRAGMA secure_delete = OFF")
        for folder in audio_dirs:
            _remove_tree(folder)
        self.checkpoint()
        return len(session_ids)

    def checkpoint(self) -> None:
        """Copy the WAL into the main file and truncate it (a no-op while another process is mid-read)."""
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError as exc:  # pragma: no cover - busy
            log.warning("could not checkpoint the store: %s", exc)

    def integrity_check(self) -> str:
        return str(self.conn.execute("PRAGMA integrity_check").fetchone()[0])


def _safe_name(name: str) -> str:
    """A session id as a folder name (ids are generated, but never trust a path component)."""
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name)).strip(".")
    return cleaned or "_"


def _remove_tree(folder: Path) -> None:
    if not folder.exists():
        return
    for child in sorted(folder.rglob("*"), reverse=True):
        if child.is_dir():
            child.rmdir()
        else:
            child.unlink()
    folder.rmdir()


# ---- the pipeline output --------------------------------------------------------------------
_START, _POINT, _MARK, _AUDIO, _END = "start", "point", "mark", "audio", "end"


class StoreSink:
    """Stores a live session: the pipeline's calls only enqueue; a writer thread commits.

    Each batch (whatever is queued when the writer wakes) is one transaction,
    committed at once, so a point is durable milliseconds after ``point()``
    returns. The queue is bounded (``max_queue``); if the disk stalls long
    enough to fill it, further points are dropped and counted (``dropped``),
    never blocking the audio path. Audio is kept only with ``keep_audio``.
    """

    def __init__(self, store: Store, patient_id: str | None = None, keep_audio: bool = False,
                 max_queue: int = 10_000, max_audio_pending: int = 64):
        self.store = store
        self.patient_id = patient_id
        self.keep_audio = bool(keep_audio)
        self.max_audio_pending = max_audio_pending
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._audio_pending = 0
        self._audio_lock = threading.Lock()
        self.session: SessionInfo | None = None
        self.dropped = 0
        self.dropped_audio = 0
        self.write_errors = 0

    # -- PointSink
    def start(self, session: SessionInfo, heatmap=None) -> None:
        self.session = session
        self._put((_START, session))
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def point(self, point: Point) -> None:
        self._put((_POINT, point))

    def mark(self, mark: Mark) -> None:
        self._put((_MARK, mark))

    def status(self, status: Status) -> None:
        pass  # the writer keeps its own heartbeat

    def segment_audio(self, point: Point, audio: np.ndarray) -> None:
        """Queue a segment's audio (float32, 16 kHz mono) for storage; ignored unless ``keep_audio``."""
        if not self.keep_audio:
            return
        with self._audio_lock:
            if self._audio_pending >= self.max_audio_pending:
                self.dropped_audio += 1
                return
            self._audio_pending += 1
        if not self._put((_AUDIO, (int(point.index), np.array(audio, dtype=np.float32, copy=True)))):
            with self._audio_lock:
                self._audio_pending -= 1

    def close(self) -> None:
        """Flush what is queued, record a clean end, stop the writer (waits; called once the session is over)."""
        if self._thread is None:
            return
        try:
            self._queue.put((_END, time.time()), timeout=10.0)
        except queue.Full:
            log.error("the store writer is stuck; the session end could not be recorded")
        self._thread.join(timeout=60.0)
        if self._thread.is_alive():
            log.error("the store writer did not finish within 60 s; some points may be missing")
        self._thread = None
        if self.dropped or self.dropped_audio or self.write_errors:
            log.warning("store: %d points and %d audio segments dropped, %d write errors", self.dropped,
                        self.dropped_audio, self.write_errors)

    def _put(self, item) -> bool:
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.error("store queue full (disk too slow?): %d points dropped so far", self.dropped)
            return False

    # -- the writer thread
    def _run(self) -> None:
        store, sid = self.store, self.session.session_id if self.session else ""
        rowid = None
        last_beat = time.monotonic()
        done = False
        while not done:
            try:
                batch = [self._queue.get(timeout=HEARTBEAT_S)]
            except queue.Empty:
                batch = []
            while len(batch) < 1000:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            points, marks, audio, end = [], [], [], None
            for kind, value in batch:
                if kind == _START:
                    created = self._retry(lambda: store.begin_session(value, self.patient_id))
                    rowid = created if created is not False else None
                elif kind == _POINT:
                    points.append(value)
                elif kind == _MARK:
                    marks.append(value)
                elif kind == _AUDIO:
                    audio.append(value)
                elif kind == _END:
                    end, done = value, True
            if rowid is None:
                if batch:
                    self.dropped += len(points)
                    log.error("store: the session could not be created; %d points lost", len(points))
                continue
            beat = time.monotonic() - last_beat >= HEARTBEAT_S
            if points or marks or beat:
                def write():
                    with store.transaction() as c:
                        Store._insert_points(c, rowid, points)
                        Store._insert_marks(c, rowid, marks)
                        c.execute("UPDATE sessions SET heartbeat_at = ? WHERE id = ?", (time.time(), rowid))

                if self._retry(write) is False:
                    self.dropped += len(points)
                last_beat = time.monotonic()
            for index, samples in audio:
                self._retry(lambda: store.add_segment_audio(sid, index, samples))
                with self._audio_lock:
                    self._audio_pending -= 1
            if end is not None:
                self._retry(lambda: store.end_session(sid, end))
        store.checkpoint()
        store.release_thread_connection()  # this writer thread ends; a long-lived Store must not keep its connection

    def _retry(self, fn, attempts: int = 3):
        """Run a write, retrying briefly (a reader holding a lock, a full disk being cleared); False on failure."""
        for attempt in range(attempts):
            try:
                result = fn()
                return True if result is None else result
            except (sqlite3.Error, OSError) as exc:
                self.write_errors += 1
                log.error("store write failed (attempt %d/%d): %s", attempt + 1, attempts, exc)
                time.sleep(0.2 * (attempt + 1))
        return False
