"""Writing the store: sessions, batches of points and marks, session ends, baselines, assignments.

Why one module of plain functions over a ``Database``: the live writer
(``monitor.history.sink``), imports, demos and tests all write through the
same statements, each a single transaction, so what the sink commits is what a
test can commit. Every INSERT names its columns, so a schema step that adds a
column cannot shift values. The SQL is the same on SQLite and PostgreSQL
(``ON CONFLICT`` upserts, ``?`` placeholders).
"""

from __future__ import annotations

import json
import time
from typing import Any, Sequence

from monitor.history.database import Backend, Connection
from monitor.history.queries import session_rowid
from monitor.history.recovery import writer_id
from monitor.live.events import Mark, Point, SessionInfo


def ensure_patient(conn: Connection, patient_id: str) -> None:
    conn.execute("INSERT INTO patients(patient_id, created_at) VALUES (?, ?) ON CONFLICT (patient_id) DO NOTHING",
                 (patient_id, time.time()))


def begin_session(db: Backend, session: SessionInfo, patient_id: str | None = None) -> int:
    """Insert the session (and its patient); returns its row id. Idempotent for the same session id."""
    patient = patient_id if patient_id is not None else session.patient_id
    with db.transaction() as c:
        if patient is not None:
            ensure_patient(c, patient)
        c.execute(
            "INSERT INTO sessions(session_id, patient_id, started_at, model_id, model_version, device,"
            " source, labels, settings, writer, heartbeat_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (session_id) DO NOTHING",
            (session.session_id, patient, float(session.started_at), session.model_id, session.model_version,
             str(session.device), session.source, json.dumps(list(session.labels)),
             json.dumps(session.settings, default=str), writer_id(), time.time()),
        )
        return session_rowid(db, session.session_id, c)


def write_batch(db: Backend, session_id: str, points: Sequence[Point] = (), marks: Sequence[Mark] = (),
                *, heartbeat: bool = True) -> None:
    """Commit points and marks of one session in one transaction (durable on return).

    ``heartbeat`` also stamps the session as written by a live process, which
    keeps ``recover_unclean`` in another process from closing it.
    """
    with db.transaction() as c:
        rowid = session_rowid(db, session_id, c)
        c.executemany(
            "INSERT INTO points(session, idx, t_start, t_end, valence, arousal, confidence, probabilities,"
            " latency_ms, wall_time, speaker, speaker_score) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (session, idx) DO UPDATE SET t_start = excluded.t_start, t_end = excluded.t_end,"
            " valence = excluded.valence, arousal = excluded.arousal, confidence = excluded.confidence,"
            " probabilities = excluded.probabilities, latency_ms = excluded.latency_ms,"
            " wall_time = excluded.wall_time, speaker = excluded.speaker, speaker_score = excluded.speaker_score",
            [(rowid, int(p.index), float(p.t_start), float(p.t_end), float(p.valence), float(p.arousal),
              float(p.confidence), json.dumps(p.probabilities), float(p.latency_ms), float(p.wall_time),
              p.speaker, None if p.speaker_score is None else float(p.speaker_score))
             for p in points])
        c.executemany("INSERT INTO marks(session, t, text, wall_time, source) VALUES (?,?,?,?,?)",
                      [(rowid, float(m.t), m.text, float(m.wall_time), m.source) for m in marks])
        if heartbeat:
            c.execute("UPDATE sessions SET heartbeat_at = ? WHERE id = ?", (time.time(), rowid))


def end_session(db: Backend, session_id: str, ended_at: float | None = None, state: str = "clean",
                audio_seconds: float | None = None, speaker_seconds: dict[str, float] | None = None) -> None:
    """Record the end; ``audio_seconds``: the session time reached (a --fast replay ends long before its audio
    would have); ``speaker_seconds``: speech time per attributed voice (None: not attributed).
    Raises KeyError when the session is not there (deleted while it ran)."""
    with db.transaction() as c:
        session_rowid(db, session_id, c)
        c.execute("UPDATE sessions SET ended_at = ?, end_state = ?, heartbeat_at = ?, "
                  "audio_seconds = COALESCE(?, audio_seconds), speaker_seconds = COALESCE(?, speaker_seconds) "
                  "WHERE session_id = ?",
                  (float(ended_at if ended_at is not None else time.time()), state, time.time(),
                   None if audio_seconds is None else float(audio_seconds),
                   json.dumps(speaker_seconds) if speaker_seconds else None, session_id))


def retime_session(db: Backend, session_id: str, started_at: float, *, as_live: bool = False,
                   duration: float | None = None) -> None:
    """Move a session to another start time, shifting every stored wall-clock time with it.

    For imports and demos (the example report replays clips as if on earlier
    days). ``as_live``: a fast replay's wall times are squeezed, so set each
    point's wall time to start + its session time and the end to start +
    ``duration`` (default: the last point's end), as a live session would have had.
    Session times (t_start/t_end) never change.
    """
    with db.transaction() as c:
        rowid = session_rowid(db, session_id, c)
        old = c.execute("SELECT started_at FROM sessions WHERE id = ?", (rowid,)).fetchone()["started_at"]
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
            duration = c.execute("SELECT COALESCE(MAX(t_end), 0) AS last_end FROM points WHERE session = ?",
                                 (rowid,)).fetchone()["last_end"]
        c.execute("UPDATE sessions SET ended_at = ? WHERE id = ? AND ended_at IS NOT NULL",
                  (float(started_at) + float(duration), rowid))


#: How close a mark's times must be to the ones given to count as that mark (the wire rounds them to 1 ms).
MARK_MATCH_S = 6e-4


def edit_mark(db: Backend, session_id: str, t: float, wall_time: float, text: str | None) -> int:
    """Change a mark's text, or delete it (``text=None``); the mark is the one at session time ``t`` made at
    ``wall_time`` (marks have no id on the wire). Returns how many rows changed (0: no such mark)."""
    with db.transaction() as c:
        rowid = session_rowid(db, session_id, c)
        where = "session = ? AND ABS(t - ?) < ? AND ABS(wall_time - ?) < ?"
        args = (rowid, float(t), MARK_MATCH_S, float(wall_time), MARK_MATCH_S)
        if text is None:
            cursor = c.execute(f"DELETE FROM marks WHERE {where}", args)
        else:
            cursor = c.execute(f"UPDATE marks SET text = ? WHERE {where}", (text, *args))
        return int(cursor.rowcount)


def assign_session(db: Backend, session_id: str, patient_id: str) -> None:
    """Give a session recorded without --patient (or with a wrong one) to ``patient_id``."""
    with db.transaction() as c:
        session_rowid(db, session_id, c)
        ensure_patient(c, patient_id)
        c.execute("UPDATE sessions SET patient_id = ? WHERE session_id = ?", (patient_id, session_id))


def set_baseline(db: Backend, patient_id: str, baseline_json: dict[str, Any], model_id: str) -> None:
    """Make ``baseline_json`` the patient's current baseline for ``model_id``; the old one is kept as replaced."""
    text = json.dumps(baseline_json)
    now = time.time()
    with db.transaction() as c:
        ensure_patient(c, patient_id)
        c.execute("UPDATE baselines SET replaced_at = ? WHERE patient_id = ? AND model_id = ? AND replaced_at IS NULL",
                  (now, patient_id, model_id))
        c.execute("INSERT INTO baselines(patient_id, model_id, created_at, baseline) VALUES (?,?,?,?)",
                  (patient_id, model_id, now, text))


def set_voiceprint(db: Backend, role: str, owner_id: str, voiceprint_json: dict[str, Any]) -> None:
    """Store a patient's or a clinician's voiceprint, replacing the one they had for the same encoder.

    The old one is overwritten, not kept: a voiceprint is biometric data, kept only while it is in use.
    A patient's is deleted with the patient (``erase.delete_patient``).
    """
    if role not in ("patient", "clinician"):
        raise ValueError(f"a voiceprint belongs to a patient or a clinician, not {role!r}")
    with db.transaction() as c:
        if role == "patient":
            ensure_patient(c, owner_id)
        c.execute("INSERT INTO voiceprints(role, owner_id, encoder, created_at, voiceprint) VALUES (?,?,?,?,?) "
                  "ON CONFLICT (role, owner_id, encoder) DO UPDATE SET created_at = excluded.created_at, "
                  "voiceprint = excluded.voiceprint", (role, owner_id, str(voiceprint_json["encoder"]), time.time(),
                                         json.dumps(voiceprint_json)))
