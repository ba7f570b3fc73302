"""Deleting a patient's or a session's data so that it does not linger anywhere in the store.

Why more than DELETE: a database keeps deleted rows' bytes around (SQLite in
free pages and the write-ahead log, PostgreSQL as dead rows in the table files
until they are vacuumed), where a copy of the files would still hold them. The
deletes run inside the backend's ``erasing()`` (SQLite: ``secure_delete``, freed
pages are zeroed) and are followed by its ``scrub()`` (SQLite: truncate the WAL;
PostgreSQL: ``VACUUM FULL`` the touched tables, then ``CHECKPOINT``); the
sessions' kept-audio folders are removed. docs/store.md says what remains
(PostgreSQL's WAL segments until recycled, backups, replicas).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from monitor.history.audio_files import remove_tree, session_audio_dir
from monitor.history.database import Backend
from monitor.history.queries import has_patient, session_rowid

#: A session's rows beside its own row in ``sessions``.
SESSION_CHILD_TABLES = ("points", "marks", "segment_audio")
SESSION_TABLES = (*SESSION_CHILD_TABLES, "sessions")
PATIENT_TABLES = (*SESSION_TABLES, "baselines", "voiceprints", "patients")


def delete_sessions(db: Backend, session_ids: Sequence[str]) -> int:
    """Delete sessions with their points, marks and audio files; freed space is overwritten or rewritten."""
    return _delete(db, session_ids, patient_id=None)


def delete_patient(db: Backend, patient_id: str) -> int:
    """Delete everything about a patient (sessions, points, marks, audio, baselines, voiceprint, the id itself).

    Returns the number of sessions deleted; KeyError when the store knows
    neither the patient nor any session of theirs.
    """
    ids = [str(r["session_id"]) for r in db.conn.execute(
        "SELECT session_id FROM sessions WHERE patient_id = ? ORDER BY started_at, session_id", (patient_id,))]
    if not ids and not has_patient(db, patient_id):
        raise KeyError(f"no patient {patient_id!r} in {db.path}")
    return _delete(db, ids, patient_id=patient_id)


def _delete(db: Backend, session_ids: Sequence[str], patient_id: str | None) -> int:
    audio_dirs: list[Path] = []
    with db.erasing(), db.transaction() as c:
        for sid in session_ids:
            rowid = session_rowid(db, sid, c)
            audio_dirs.append(session_audio_dir(db.files_dir, sid))
            for table in SESSION_CHILD_TABLES:
                c.execute(f"DELETE FROM {table} WHERE session = ?", (rowid,))
            c.execute("DELETE FROM sessions WHERE id = ?", (rowid,))
        if patient_id is not None:
            c.execute("DELETE FROM baselines WHERE patient_id = ?", (patient_id,))
            c.execute("DELETE FROM voiceprints WHERE role = 'patient' AND owner_id = ?", (patient_id,))
            c.execute("DELETE FROM patients WHERE patient_id = ?", (patient_id,))
    for folder in audio_dirs:
        remove_tree(folder)
    db.scrub(PATIENT_TABLES if patient_id is not None else SESSION_TABLES)
    return len(session_ids)


def delete_clinician(db: Backend, clinician_id: str) -> int:
    """Delete a clinician's voiceprints (biometric data), leaving no trace; returns how many were deleted."""
    with db.erasing(), db.transaction() as c:
        n = c.execute("DELETE FROM voiceprints WHERE role = 'clinician' AND owner_id = ?", (clinician_id,)).rowcount
    db.scrub(("voiceprints",))
    return int(n)
