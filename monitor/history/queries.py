"""Reading the store: patients, sessions, points, marks and baselines as named rows.

Why names: every column is read by its name (``sqlite3.Row`` or the PostgreSQL
backend's ``Row``, and ``AS`` aliases matching the dataclass fields), never by
position, so a reordered or extended SELECT cannot silently shift a value into
the wrong field; a missing column fails loudly instead. Each query is written
once, in SQL that SQLite and PostgreSQL both run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence, TypeVar

import numpy as np

from monitor.history.database import Backend, Connection
from monitor.live.placement import calibration_status

_Row = TypeVar("_Row", "PatientRow", "SessionRow")


# ---- row types ------------------------------------------------------------------------------
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
    audio_seconds: float | None = None  # seconds of audio the session covered (None: unknown, or still running)

    @property
    def minutes(self) -> float | None:
        """The session's length: its audio (a replay at any speed), else its wall-clock time; None while running."""
        return session_minutes(self.started_at, self.ended_at, self.audio_seconds)

    @property
    def calibration(self) -> dict[str, Any]:
        """Enrolled or uncalibrated, from the settings the session recorded (no column: older files read the same)."""
        return calibration_status(self.settings)

    @property
    def enrolled(self) -> bool:
        return bool(self.calibration["enrolled"])

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "enrolled": self.enrolled}


def session_minutes(started_at: float, ended_at: float | None, audio_seconds: float | None) -> float | None:
    """A session's length in minutes: the audio it covered when known, else end minus start (None: running)."""
    if audio_seconds is not None:
        return float(audio_seconds) / 60.0
    if ended_at is None:
        return None
    return (float(ended_at) - float(started_at)) / 60.0


def _named(cls: type[_Row], row: Any, **converted: Any) -> _Row:
    """Build ``cls`` from the row's columns of the same names (``converted`` overrides decoded ones)."""
    return cls(**{f.name: converted[f.name] if f.name in converted else row[f.name] for f in fields(cls)})


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
        seconds: np.ndarray = np.maximum(self.t_end - self.t_start, 0.0)
        return seconds

    def select(self, which: np.ndarray) -> "PointTable":
        """The points at ``which`` (a boolean mask or positions, kept in that order)."""
        return PointTable(**{f.name: getattr(self, f.name)[which] for f in fields(self)})

    @classmethod
    def from_rows(cls, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> "PointTable":
        """Rows of values for ``columns``, which must name every field of this class (in any order)."""
        fields_ = [f.name for f in fields(cls)]
        cols: dict[str, Sequence[Any]] = dict(zip(columns, zip(*rows, strict=True), strict=True)) if rows else {}
        missing = set(fields_) - set(columns)
        if missing:
            raise ValueError(f"point rows lack the columns {sorted(missing)}")

        def col(name: str, dtype: Any) -> np.ndarray:
            return np.asarray(cols.get(name, ()), dtype=dtype)

        return cls(session=col("session", object), index=col("index", np.int64),
                   **{name: col(name, np.float64) for name in fields_ if name not in ("session", "index")})


# ---- lookups --------------------------------------------------------------------------------
def session_rowid(db: Backend, session_id: str, conn: Connection | None = None) -> int:
    """The internal row id of a session; KeyError naming the store when there is none."""
    row = (conn or db.conn).execute("SELECT id FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
    if row is None:
        raise KeyError(f"no session {session_id!r} in {db.path}")
    return int(row["id"])


def has_patient(db: Backend, patient_id: str) -> bool:
    """One indexed lookup (the CLIs check a --patient before doing anything)."""
    return db.conn.execute("SELECT 1 FROM patients WHERE patient_id = ?", (patient_id,)).fetchone() is not None


def patient_ids(db: Backend, limit: int | None = None) -> list[str]:
    """Known patient ids, sorted (``limit`` of them when given), e.g. for an error message's hint."""
    sql = "SELECT patient_id FROM patients ORDER BY patient_id" + (" LIMIT ?" if limit is not None else "")
    return [str(r["patient_id"]) for r in db.conn.execute(sql, () if limit is None else (int(limit),))]


# ---- patients and sessions ------------------------------------------------------------------
def patients(db: Backend) -> list[PatientRow]:
    """Every patient, plus one row with ``patient_id=None`` when unassigned sessions exist."""
    rows = db.conn.execute(
        """SELECT p.patient_id AS patient_id, p.created_at AS created_at, COUNT(s.id) AS sessions,
                  CAST(COALESCE(SUM((SELECT COUNT(*) FROM points WHERE session = s.id)), 0) AS BIGINT) AS points,
                  MIN(s.started_at) AS first_session, MAX(s.started_at) AS last_session
           FROM patients p LEFT JOIN sessions s ON s.patient_id = p.patient_id
           GROUP BY p.patient_id ORDER BY p.patient_id""").fetchall()
    out = [_named(PatientRow, r) for r in rows]
    unassigned = db.conn.execute(
        """SELECT NULL AS patient_id, NULL AS created_at, COUNT(*) AS sessions,
                  CAST(COALESCE(SUM((SELECT COUNT(*) FROM points WHERE session = s.id)), 0) AS BIGINT) AS points,
                  MIN(started_at) AS first_session, MAX(started_at) AS last_session
           FROM sessions s WHERE patient_id IS NULL""").fetchone()
    if unassigned["sessions"]:
        out.append(_named(PatientRow, unassigned))
    return out


_SESSION_COLUMNS = """
    s.session_id AS session_id, s.patient_id AS patient_id, s.started_at AS started_at, s.ended_at AS ended_at,
    s.end_state AS end_state, s.model_id AS model_id, s.model_version AS model_version, s.device AS device,
    s.source AS source, s.labels AS labels, s.settings AS settings, s.audio_seconds AS audio_seconds,
    (SELECT COUNT(*) FROM points WHERE session = s.id) AS points,
    (SELECT COALESCE(SUM(CASE WHEN t_end > t_start THEN t_end - t_start ELSE 0 END), 0)
     FROM points WHERE session = s.id) AS speech_seconds,
    (SELECT COUNT(*) FROM marks WHERE session = s.id) AS marks"""


def sessions(db: Backend, patient_id: str | None = None, *, unassigned: bool = False, start: float | None = None,
             end: float | None = None, session_ids: Sequence[str] | None = None) -> list[SessionRow]:
    """Sessions, oldest first: all, one patient's, the unassigned ones, and/or started in [start, end)."""
    where: list[str] = []
    args: list[Any] = []
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
    sql = (f"SELECT {_SESSION_COLUMNS} FROM sessions s" + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY s.started_at, s.session_id")
    return [_named(SessionRow, r, labels=json.loads(r["labels"] or "[]"), settings=json.loads(r["settings"] or "{}"),
                   speech_seconds=float(r["speech_seconds"]))
            for r in db.conn.execute(sql, args).fetchall()]


def session(db: Backend, session_id: str) -> SessionRow | None:
    rows = sessions(db, session_ids=[session_id])
    return rows[0] if rows else None


# ---- points and marks -----------------------------------------------------------------------
def points(db: Backend, session_ids: Sequence[str]) -> PointTable:
    """The points of these sessions, ordered by session start then segment index."""
    columns = ["session", "index", "t_start", "t_end", "valence", "arousal", "confidence", "wall_time"]
    rows: list[tuple[Any, ...]] = []
    ids = list(session_ids)
    for i in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
        chunk = ids[i:i + 500]
        # plain tuples: this read can be 100k rows; columns are matched by name below
        columns, chunk_rows = db.fetch_tuples(
            f"""SELECT s.session_id AS session, p.idx AS "index", p.t_start AS t_start, p.t_end AS t_end,
                       p.valence AS valence, p.arousal AS arousal, p.confidence AS confidence,
                       p.wall_time AS wall_time
                FROM points p JOIN sessions s ON s.id = p.session
                WHERE s.session_id IN ({','.join('?' * len(chunk))})
                ORDER BY s.started_at, s.session_id, p.idx""", chunk)
        rows += chunk_rows
    return PointTable.from_rows(columns, rows)


def point_records(db: Backend, session_id: str) -> list[dict[str, Any]]:
    """A session's points as dicts (every stored field), for export."""
    rows = db.conn.execute(
        """SELECT idx AS "index", t_start, t_end, valence, arousal, confidence, probabilities, latency_ms, wall_time,
                  speaker, speaker_score
           FROM points WHERE session = ? ORDER BY idx""", (session_rowid(db, session_id),)).fetchall()
    return [{**dict(r), "probabilities": json.loads(r["probabilities"] or "{}")} for r in rows]


def mark_records(db: Backend, session_id: str) -> list[dict[str, Any]]:
    rows = db.conn.execute("SELECT t, text, wall_time, source FROM marks WHERE session = ? ORDER BY t, id",
                           (session_rowid(db, session_id),)).fetchall()
    return [dict(r) for r in rows]


# ---- baselines ------------------------------------------------------------------------------
def get_baseline(db: Backend, patient_id: str, model_id: str | None = None) -> dict[str, Any] | None:
    """The current baseline for ``model_id`` (any model's latest when None), or None."""
    sql = "SELECT baseline FROM baselines WHERE patient_id = ? AND replaced_at IS NULL"
    args: list[Any] = [patient_id]
    if model_id is not None:
        sql += " AND model_id = ?"
        args.append(model_id)
    row = db.conn.execute(sql + " ORDER BY created_at DESC, id DESC LIMIT 1", args).fetchone()
    return None if row is None else dict(json.loads(row["baseline"]))


def baseline_history(db: Backend, patient_id: str) -> list[dict[str, Any]]:
    """Every baseline of the patient, oldest first, replaced ones included."""
    rows = db.conn.execute("SELECT model_id, created_at, replaced_at, baseline FROM baselines "
                           "WHERE patient_id = ? ORDER BY created_at, id", (patient_id,)).fetchall()
    return [{**dict(r), "baseline": json.loads(r["baseline"])} for r in rows]


# ---- voiceprints ----------------------------------------------------------------------------
def get_voiceprint(db: Backend, role: str, owner_id: str, encoder: str) -> dict[str, Any] | None:
    """A patient's or clinician's voiceprint for this speaker encoder, or None."""
    row = db.conn.execute("SELECT voiceprint FROM voiceprints WHERE role = ? AND owner_id = ? AND encoder = ?",
                          (role, owner_id, encoder)).fetchone()
    return None if row is None else dict(json.loads(row["voiceprint"]))


def voiceprint_encoders(db: Backend, role: str, owner_id: str) -> list[str]:
    """The speaker encoders this patient or clinician has a voiceprint from."""
    rows = db.conn.execute("SELECT encoder FROM voiceprints WHERE role = ? AND owner_id = ? ORDER BY encoder",
                           (role, owner_id)).fetchall()
    return [str(r["encoder"]) for r in rows]


def session_speaker_seconds(db: Backend, session_id: str) -> dict[str, float] | None:
    """The session's speech time per attributed voice, or None (not attributed, or still running)."""
    row = db.conn.execute("SELECT speaker_seconds FROM sessions WHERE id = ?",
                          (session_rowid(db, session_id),)).fetchone()
    return None if row is None or row["speaker_seconds"] is None else dict(json.loads(row["speaker_seconds"]))
