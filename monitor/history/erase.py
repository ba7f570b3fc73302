"""Deleting a patient's or a session's data so that it does not linger anywhere in the store.

Why more than DELETE: SQLite leaves deleted rows in free pages and in the
write-ahead log, where a copy of the file would still hold them. Deletion
therefore runs with ``secure_delete`` (freed pages are zeroed), truncates the
WAL afterwards, and removes the sessions' kept-audio folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from monitor.history.audio_files import remove_tree, session_audio_dir
from monitor.history.database import Database
from monitor.history.queries import has_patient, session_rowid


def delete_sessions(db: Database, session_ids: Sequence[str]) -> int:
    """Delete sessions with their points, marks and audio files; freed pages are overwritten."""
    return _delete(db, session_ids, patient_id=None)


def delete_patient(db: Database, patient_id: str) -> int:
    """Delete everything about a patient (sessions, points, marks, audio, baselines, voiceprint, the id itself).

    Returns the number of sessions deleted; KeyError when the store knows
    neither the patient nor any session of theirs.
    """
    ids = [str(r["session_id"]) for r in db.conn.execute(
        "SELECT session_id FROM sessions WHERE patient_id = ? ORDER BY started_at, session_id", (patient_id,))]
    if not ids and not has_patient(db, patient_id):
        raise KeyError(f"no patient {patient_id!r} in {db.path}")
    return _delete(db, ids, patient_id=patient_id)


def _delete(db: Database, session_ids: Sequence[str], patient_id: str | None) -> int:
    conn = db.conn
    conn.execute("PRAGMA secure_delete = ON")
    audio_dirs: list[Path] = []
    try:
        with db.transaction() as c:
            for sid in session_ids:
                rowid = session_rowid(db, sid, c)
                audio_dirs.append(session_audio_dir(db.path, sid))
                for table in ("points", "marks", "segment_audio"):
                    c.execute(f"DELETE FROM {table} WHERE session = ?", (rowid,))
                c.execute("DELETE FROM sessions WHERE id = ?", (rowid,))
            if patient_id is not None:
                c.execute("DELETE FROM baselines WHERE patient_id = ?", (patient_id,))
                c.execute("DELETE FROM voiceprints WHERE role = 'patient' AND owner_id = ?", (patient_id,))
                c.execute("DELETE FROM patients WHERE patient_id = ?", (patient_id,))
    finally:
        conn.execute("PRAGMA secure_delete = OFF")
    for folder in audio_dirs:
        remove_tree(folder)
    db.checkpoint()  # the WAL still holds the deleted rows until it is copied back and truncated
    return len(session_ids)


def delete_clinician(db: Database, clinician_id: str) -> int:
    """Delete a clinician's voiceprints (biometric data), freed pages overwritten; returns how many were deleted."""
    conn = db.conn
    conn.execute("PRAGMA secure_delete = ON")
    try:
        with db.transaction() as c:
            n = c.execute("DELETE FROM voiceprints WHERE role = 'clinician' AND owner_id = ?", (clinician_id,)).rowcount
    finally:
        conn.execute("PRAGMA secure_delete = OFF")
    db.checkpoint()
    return int(n)
