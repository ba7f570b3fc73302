"""Kept audio (``--keep-audio``): one FLAC file per speech segment, in a folder per session next to the database.

Why files and not BLOBs: audio would grow the database by megabytes per
session and slow every backup and checkpoint; FLAC files can be listed, played
and deleted on their own. The ``segment_audio`` table records each file's path
relative to the database folder, so a copied data folder still resolves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from monitor.history.database import Database
from monitor.history.queries import session_rowid
from monitor.model.audio_format import SAMPLE_RATE

AUDIO_DIR = "audio"  # relative to the database's folder


def audio_root(db_path: Path) -> Path:
    return Path(db_path).parent / AUDIO_DIR


def safe_name(name: str) -> str:
    """A session id as a folder name (ids are generated, but never trust a path component)."""
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name)).strip(".")
    return cleaned or "_"


def session_audio_dir(db_path: Path, session_id: str) -> Path:
    """The folder holding one session's segments (it may not exist)."""
    return audio_root(db_path) / safe_name(session_id)


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


def add_segment_audio(db: Database, session_id: str, index: int, audio: np.ndarray,
                      sample_rate: int = SAMPLE_RATE) -> Path:
    """Write one segment's audio as 16-bit FLAC under audio/<session>/ and record it."""
    import soundfile as sf

    rel = Path(AUDIO_DIR) / safe_name(session_id) / f"{int(index):06d}.flac"
    path = db.path.parent / rel
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)
    sf.write(str(path), data, sample_rate, format="FLAC", subtype="PCM_16")
    with db.transaction() as c:
        c.execute("INSERT OR REPLACE INTO segment_audio(session, idx, path, sample_rate, samples) VALUES (?,?,?,?,?)",
                  (session_rowid(db, session_id, c), int(index), rel.as_posix(), int(sample_rate), len(data)))
    return path


def audio_records(db: Database, session_id: str) -> list[dict[str, Any]]:
    """The session's kept segments: index, path (relative to the database folder), sample rate, samples."""
    rows = db.conn.execute('SELECT idx AS "index", path, sample_rate, samples FROM segment_audio WHERE session = ? '
                           "ORDER BY idx", (session_rowid(db, session_id),)).fetchall()
    return [dict(r) for r in rows]
