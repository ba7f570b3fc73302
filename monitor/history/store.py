"""The longitudinal store: every session's points, kept per patient, in one SQLite file or a PostgreSQL database.

Why SQLite by default: it is in the standard library, needs no server beside a
therapy room's laptop, and in WAL mode a committed transaction survives the
process being killed (``synchronous=FULL`` also survives a power cut). The
dashboard and reports read while the monitor writes. A clinic with several
rooms can point every tool at one PostgreSQL database instead
(``Store.open("postgresql://...")``, ``--db postgresql://...``): same schema,
same queries, same guarantees (``monitor.history.postgres``).

Layout (``docs/store.md`` has the full schema)::

    patients  1──n  sessions  1──n  points
                              1──n  marks
                              1──n  segment_audio  (only with --keep-audio: FLAC files in the data folder)
    patients  1──n  baselines (speaker baselines from enrolment; replaced ones are kept)
    voiceprints      (a patient's or a clinician's, per speaker encoder; biometric, never exported)

``Store`` is the one object callers hold; each of its jobs lives in its own module:

* ``database``: the SQLite file, per-thread connections (WAL, ``synchronous=FULL``), transactions;
  ``postgres``: the same for PostgreSQL; ``target``: ``--db`` (a file or a URL) and names without passwords;
* ``schema``: ``MIGRATIONS`` and ``SCHEMA_VERSION``, applied by ``Store.open``;
* ``recovery``: sessions whose monitor died are closed on open, at their last point;
* ``queries``: reads, returning named rows (``SessionRow``, ``PatientRow``, ``PointTable``);
* ``writes``: the write API (``write_batch`` is what the live sink commits);
* ``audio_files``: kept audio, FLAC files next to the SQLite file (in the data folder with PostgreSQL);
* ``erase``: deletion that leaves no trace (secure_delete and WAL truncation, or VACUUM FULL; audio folders);
* ``sink`` (above this module): ``StoreSink``, the pipeline output with its writer thread.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from calibration.attribution import Voiceprint
from calibration.speaker import SpeakerBaseline
from monitor.history import audio_files, erase, queries, writes
from monitor.history.audio_files import AUDIO_DIR
from monitor.history.database import (DATA_DIR_ENV, DB_FILENAME, Backend, Connection, Database, StoreError,
                                      default_data_dir, default_db_path)
from monitor.history.queries import PatientRow, PointTable, SessionRow
from monitor.history.recovery import STALE_AFTER_S, recover_unclean
from monitor.history.schema import MIGRATIONS, SCHEMA_VERSION, migrate
from monitor.history.target import is_postgres_url, redact, store_target
from monitor.live.events import Mark, Point, SessionInfo
from monitor.model.audio_format import SAMPLE_RATE

__all__ = [
    "AUDIO_DIR", "DATA_DIR_ENV", "DB_FILENAME", "MIGRATIONS", "SCHEMA_VERSION", "STALE_AFTER_S", "PatientRow",
    "PointTable", "SessionRow", "Store", "StoreError", "default_data_dir", "default_db_path", "open_existing",
]

log = logging.getLogger(__name__)


def open_existing(db: str | Path | None, data_dir: str | Path | None = None) -> "Store":
    """Open a store that must already exist (the reading CLIs), raising ``StoreError`` that names it."""
    target = store_target(db, data_dir)
    if isinstance(target, Path) and not target.exists():
        raise StoreError(f"no store at {target} (give --db or --data-dir)")
    return Store.open(target, data_dir=data_dir, create=isinstance(target, Path))  # a server's database: must hold one


def open_backend(target: str | Path, data_dir: str | Path | None = None) -> Backend:
    """The database behind ``target``: a ``postgresql://`` (or ``postgres://``) URL, else a SQLite file."""
    if is_postgres_url(target):
        from monitor.history.postgres import PgDatabase

        return PgDatabase.create_or_open(str(target), data_dir)
    return Database.create_or_open(target)


class Store:
    """One SQLite file or PostgreSQL database. Thread-safe: each thread gets its own connection."""

    def __init__(self, db: Backend):
        self.db = db
        self.recovered_sessions: list[str] = []

    @classmethod
    def open(cls, target: str | Path, *, recover: bool = True, data_dir: str | Path | None = None,
             create: bool = True) -> "Store":
        """Open (creating folder and file if needed), migrate to the current schema, close dead sessions.

        ``target``: a SQLite file or a ``postgresql://`` URL; ``data_dir``: where
        a PostgreSQL store keeps kept audio (default: the data folder).
        ``create=False`` refuses a database that holds no store yet.
        """
        db = open_backend(target, data_dir)
        try:
            if not create and db.schema_version() == 0:
                raise StoreError(f"no store in {db.path} (run the monitor with this --db once, or give another)")
            migrate(db)
        except db.errors as exc:
            db.close()
            raise StoreError(f"cannot open the store {db.path}: {redact(str(exc), str(target)).strip()}") from None
        except StoreError:
            db.close()
            raise
        store = cls(db)
        if recover:
            store.recovered_sessions = recover_unclean(db)
        return store

    @property
    def errors(self) -> tuple[type[Exception], ...]:
        """What a failed read or write raises (the backend driver's error classes)."""
        return self.db.errors

    # -- the database and its connections
    @property
    def path(self) -> Path | str:
        """The SQLite file, or the PostgreSQL URL without its password (for messages)."""
        return self.db.path

    @property
    def conn(self) -> Connection:
        """This thread's connection (created on first use)."""
        return self.db.conn

    @property
    def audio_root(self) -> Path:
        return audio_files.audio_root(self.db.files_dir)

    def transaction(self, immediate: bool = True) -> AbstractContextManager[Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) on this thread's connection."""
        return self.db.transaction(immediate)

    def release_thread_connection(self) -> None:
        """Close the calling thread's connection (a thread that is about to end)."""
        self.db.release_thread_connection()

    def close(self) -> None:
        """Close every thread's connection (SQLite: checkpointing the WAL into the main file)."""
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def schema_version(self) -> int:
        return self.db.schema_version()

    def checkpoint(self) -> None:
        """Copy the WAL into the main file and truncate it (a no-op while another process is mid-read)."""
        self.db.checkpoint()

    def integrity_check(self) -> str:
        return self.db.integrity_check()

    def recover_unclean(self, stale_after_s: float = STALE_AFTER_S) -> list[str]:
        """Close sessions whose writer died; returns their ids (``Store.open`` does this already)."""
        return recover_unclean(self.db, stale_after_s)

    # -- writing
    def ensure_patient(self, patient_id: str, conn: Connection | None = None) -> None:
        writes.ensure_patient(conn or self.conn, patient_id)

    def begin_session(self, session: SessionInfo, patient_id: str | None = None) -> int:
        """Insert the session (and its patient); returns its row id. Idempotent for the same session id."""
        return writes.begin_session(self.db, session, patient_id)

    def write_batch(self, session_id: str, points: Sequence[Point] = (), marks: Sequence[Mark] = (),
                    *, heartbeat: bool = True) -> None:
        """Commit a session's points and marks in one transaction, stamping its heartbeat (the live sink's write)."""
        writes.write_batch(self.db, session_id, points, marks, heartbeat=heartbeat)

    def edit_mark(self, session_id: str, t: float, wall_time: float, text: str | None) -> int:
        """Change a mark's text or delete it (``text=None``); the number of rows changed (0: no such mark)."""
        return writes.edit_mark(self.db, session_id, t, wall_time, text)

    def add_points(self, session_id: str, points: Sequence[Point]) -> None:
        """Store points of a session (imports, tests); no heartbeat, unlike a live writer."""
        writes.write_batch(self.db, session_id, points, heartbeat=False)

    def end_session(self, session_id: str, ended_at: float | None = None, state: str = "clean",
                    audio_seconds: float | None = None, speaker_seconds: dict[str, float] | None = None) -> None:
        """Record the session's end (the seconds of audio it covered, speech per voice); KeyError if it is not there."""
        writes.end_session(self.db, session_id, ended_at, state, audio_seconds, speaker_seconds)

    def retime_session(self, session_id: str, started_at: float, *, as_live: bool = False,
                       duration: float | None = None) -> None:
        """Move a session to another start time with all its wall-clock times (see ``writes.retime_session``)."""
        writes.retime_session(self.db, session_id, started_at, as_live=as_live, duration=duration)

    def add_segment_audio(self, session_id: str, index: int, audio: np.ndarray,
                          sample_rate: int = SAMPLE_RATE) -> Path:
        """Write one segment's audio as 16-bit FLAC under audio/<session>/ and record it."""
        return audio_files.add_segment_audio(self.db, session_id, index, audio, sample_rate)

    # -- baselines (enrolment)
    def set_baseline(self, patient_id: str, baseline_json: dict[str, Any], model_id: str) -> None:
        """Make ``baseline_json`` the patient's current baseline for ``model_id``; the old one is kept as replaced."""
        writes.set_baseline(self.db, patient_id, baseline_json, model_id)

    def get_baseline(self, patient_id: str, model_id: str | None = None) -> dict[str, Any] | None:
        """The current baseline for ``model_id`` (any model's latest when None), or None."""
        return queries.get_baseline(self.db, patient_id, model_id)

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
        return queries.baseline_history(self.db, patient_id)

    # -- voiceprints (biometric data: only here, deleted with the patient, never exported)
    def set_voiceprint(self, role: str, owner_id: str, voiceprint: Voiceprint) -> None:
        """Keep the patient's or clinician's voiceprint (replacing theirs for the same encoder)."""
        writes.set_voiceprint(self.db, role, owner_id, voiceprint.to_json())

    def voiceprint(self, role: str, owner_id: str, encoder: str) -> Voiceprint | None:
        """The enrolled voiceprint for this speaker encoder, or None."""
        data = queries.get_voiceprint(self.db, role, owner_id, encoder)
        return None if data is None else Voiceprint.from_json(data)

    def voiceprint_encoders(self, role: str, owner_id: str) -> list[str]:
        """The speaker encoders this patient or clinician has a voiceprint from (to say why one is missing)."""
        return queries.voiceprint_encoders(self.db, role, owner_id)

    def speaker_seconds(self, session_id: str) -> dict[str, float] | None:
        """A finished session's speech time per attributed voice (None: not attributed)."""
        return queries.session_speaker_seconds(self.db, session_id)

    def delete_clinician(self, clinician_id: str) -> int:
        """Delete a clinician's voiceprints; returns how many there were."""
        return erase.delete_clinician(self.db, clinician_id)

    # -- reading
    def has_patient(self, patient_id: str) -> bool:
        """Whether the patient id is known (one indexed lookup, unlike ``patients()``)."""
        return queries.has_patient(self.db, patient_id)

    def patient_ids(self, limit: int | None = None) -> list[str]:
        return queries.patient_ids(self.db, limit)

    def patients(self) -> list[PatientRow]:
        """Every patient, plus one row with ``patient_id=None`` when unassigned sessions exist."""
        return queries.patients(self.db)

    def sessions(self, patient_id: str | None = None, *, unassigned: bool = False, start: float | None = None,
                 end: float | None = None, session_ids: Sequence[str] | None = None) -> list[SessionRow]:
        """Sessions, oldest first: all, one patient's, the unassigned ones, and/or started in [start, end)."""
        return queries.sessions(self.db, patient_id, unassigned=unassigned, start=start, end=end,
                                session_ids=session_ids)

    def session(self, session_id: str) -> SessionRow | None:
        return queries.session(self.db, session_id)

    def points(self, session_ids: Sequence[str]) -> PointTable:
        """The points of these sessions, ordered by session start then segment index."""
        return queries.points(self.db, session_ids)

    def point_records(self, session_id: str) -> list[dict[str, Any]]:
        """A session's points as dicts (every stored field), for export."""
        return queries.point_records(self.db, session_id)

    def mark_records(self, session_id: str) -> list[dict[str, Any]]:
        return queries.mark_records(self.db, session_id)

    def audio_records(self, session_id: str) -> list[dict[str, Any]]:
        return audio_files.audio_records(self.db, session_id)

    # -- data management
    def assign_session(self, session_id: str, patient_id: str) -> None:
        """Give a session recorded without --patient (or with a wrong one) to ``patient_id``."""
        writes.assign_session(self.db, session_id, patient_id)

    def delete_sessions(self, session_ids: Sequence[str]) -> int:
        """Delete sessions with their points, marks and audio files; freed pages are overwritten."""
        return erase.delete_sessions(self.db, session_ids)

    def delete_patient(self, patient_id: str) -> int:
        """Delete everything about a patient; nothing lingers in the file (see ``monitor.history.erase``)."""
        return erase.delete_patient(self.db, patient_id)
