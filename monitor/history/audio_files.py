"""Kept audio (``--keep-audio``): one FLAC file per speech segment, in a folder per session.

The folders are next to the SQLite file, or in the data folder (``--data-dir``)
when the store is a PostgreSQL database (``Backend.files_dir``).

Why files and not BLOBs: audio would grow the database by megabytes per
session and slow every backup and checkpoint; FLAC files can be listed, played
and deleted on their own. The ``segment_audio`` table records each file's path
relative to that folder, so a copied data folder still resolves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from monitor.history.database import Backend
from monitor.history.queries import session_rowid
from monitor.live.private import private_dir
from monitor.model.audio_format import SAMPLE_RATE

AUDIO_DIR = "audio"  # relative to the store's files folder (Backend.files_dir)


def audio_root(files_dir: Path) -> Path:
    return Path(files_dir) / AUDIO_DIR


def safe_name(name: str) -> str:
    """A session id as a folder name (ids are generated, but never trust a path component)."""
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name)).strip(".")
    return cleaned or "_"


def session_audio_dir(files_dir: Path, session_id: str) -> Path:
    """The folder holding one session's segments (it may not exist)."""
    return audio_root(files_dir) / safe_name(session_id)


def remove_tree(folder: Path) -> None:
    """Delete a session's audio folder and everything in it (no-op when absent)."""
    if not folder.exists():
        return
    for child in sorted(folder.rglob("*"), reverse=True):
        if child.is_dir():
            child.rmdir()
        else:
            child.unlink()
    folder.rmdir()


def add_segment_audio(db: Backend, session_id: str, index: int, audio: np.ndarray,
                      sample_rate: int = SAMPLE_RATE) -> Path:
    """Write one segment's audio as 16-bit FLAC under audio/<session>/ and record it."""
    import soundfile as sf

    rel = Path(AUDIO_DIR) / safe_name(session_id) / f"{int(index):06d}.flac"
    path = db.files_dir / rel
    private_dir(path.parent)
    data = np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)
    sf.write(str(path), data, sample_rate, format="FLAC", subtype="PCM_16")
    with db.transaction() as c:
        c.execute("INSERT INTO segment_audio(session, idx, path, sample_rate, samples) VALUES (?,?,?,?,?) "
                  "ON CONFLICT (session, idx) DO UPDATE SET path = excluded.path, "
                  "sample_rate = excluded.sample_rate, samples = excluded.samples",
                  (session_rowid(db, session_id, c), int(index), rel.as_posix(), int(sample_rate), len(data)))
    return path


def audio_records(db: Backend, session_id: str) -> list[dict[str, Any]]:
    """The session's kept segments: index, path (relative to the store's files folder), sample rate, samples."""
    rows = db.conn.execute('SELECT idx AS "index", path, sample_rate, samples FROM segment_audio WHERE session = ? '
                           "ORDER BY idx", (session_rowid(db, session_id),)).fetchall()
    return [dict(r) for r in rows]
