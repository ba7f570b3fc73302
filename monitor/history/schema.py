"""The schema: ordered migration steps, applied on open, one transaction each.

Why steps instead of ``CREATE TABLE IF NOT EXISTS``: files written by older
versions must gain new columns and tables without losing data. The version
lives in ``PRAGMA user_version`` (SQLite) or a one-row table (PostgreSQL);
step *i* moves a store from version *i* to *i + 1*, and re-reading the
version inside the write lock (SQLite's ``BEGIN IMMEDIATE``, PostgreSQL's
``pg_advisory_xact_lock``) makes two processes opening an old store at once
migrate it once. The steps are written once, in SQLite's types; the
PostgreSQL backend translates the types (``monitor.history.postgres.pg_ddl``).
"""

from __future__ import annotations

import logging

from monitor.history.database import Backend, StoreError

log = logging.getLogger(__name__)

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
    # v3: how much audio a session covered, so a replay run faster than real time (--fast) is not "0.0 minutes".
    [
        "ALTER TABLE sessions ADD COLUMN audio_seconds REAL",  # session seconds of audio; NULL: unknown (older)
        "UPDATE sessions SET audio_seconds = (SELECT MAX(t_end) FROM points WHERE session = sessions.id) "
        "WHERE ended_at IS NOT NULL AND ended_at - started_at < (SELECT MAX(t_end) FROM points "
        "WHERE session = sessions.id)",  # older replays: at least their last point's end
    ],
    # v4: whose voice a point is (issue 14), the session's speech time per voice, and enrolled voiceprints.
    [
        "ALTER TABLE points ADD COLUMN speaker TEXT",          # patient | clinician | unknown; NULL: not attributed
        "ALTER TABLE points ADD COLUMN speaker_score REAL",    # cosine with that voice's voiceprint
        "ALTER TABLE sessions ADD COLUMN speaker_seconds TEXT",  # JSON {speaker: seconds}; NULL: not attributed
        """CREATE TABLE voiceprints (
            role TEXT NOT NULL CHECK (role IN ('patient', 'clinician')),
            owner_id TEXT NOT NULL,               -- the patient id or the clinician id
            encoder TEXT NOT NULL,                -- the speaker encoder that made it
            created_at REAL NOT NULL,
            voiceprint TEXT NOT NULL,             -- JSON object (calibration.attribution.Voiceprint); biometric data
            PRIMARY KEY (role, owner_id, encoder)
        ) WITHOUT ROWID""",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: Backend) -> None:
    """Apply the missing steps; refuse a store written by a newer program."""
    version = db.schema_version()
    created = version == 0
    if version > SCHEMA_VERSION:
        raise StoreError(f"{db.path} has schema version {version}, newer than this program knows "
                         f"({SCHEMA_VERSION}); upgrade mood-monitor")
    while version < SCHEMA_VERSION:
        with db.transaction() as c:
            # Re-read inside the write lock: another process may have migrated meanwhile.
            version = db.lock_schema(c)
            if version >= SCHEMA_VERSION:
                break
            for statement in MIGRATIONS[version]:
                c.execute(db.ddl(statement))
            db.set_schema_version(c, version + 1)
        version += 1
        if not created:
            log.info("store %s migrated to schema version %d", db.path, version)
    if created:
        log.info("created the store %s (schema version %d)", db.path, SCHEMA_VERSION)
