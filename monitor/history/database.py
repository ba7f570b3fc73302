"""The SQLite file itself: where it lives, and one connection per thread set up for durability.

Why per-thread connections: a ``sqlite3.Connection`` must not be used by two
threads at once, while the monitor's writer thread, the dashboard's history
requests and the CLIs all read or write. In WAL mode readers and the writer
overlap; ``synchronous=FULL`` makes every COMMIT survive a killed process and a
power cut. Rows come back as ``sqlite3.Row`` so code reads columns by name.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from monitor.model.datadir import DATA_DIR_ENV, default_data_dir

log = logging.getLogger(__name__)

__all__ = ["DATA_DIR_ENV", "DB_FILENAME", "Database", "StoreError", "default_data_dir", "default_db_path"]

DB_FILENAME = "mood-monitor.sqlite"


class StoreError(RuntimeError):
    """The store cannot be used (newer schema, unreadable file); the message says which."""


def default_db_path(data_dir: str | Path | None = None) -> Path:
    """DATA_DIR/mood-monitor.sqlite: DATA_DIR is ``data_dir``, $MOOD_MONITOR_DATA_DIR or ~/.local/share/mood-monitor."""
    return (Path(data_dir).expanduser() if data_dir else default_data_dir()) / DB_FILENAME


class Database:
    """One SQLite file; each thread gets its own connection on first use (thread-safe)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    @classmethod
    def create_or_open(cls, path: str | Path) -> "Database":
        """Open the file, creating it (owner-only: clinical data) and its folder if needed; no schema yet."""
        path = Path(path).expanduser()
        if path.is_dir():
            raise StoreError(f"{path} is a folder; give the database file (e.g. {path / DB_FILENAME})")
        if not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        new_file = not path.exists()
        db = cls(path)
        try:
            db.conn  # noqa: B018 - connecting creates the file and checks that it is a database
        except sqlite3.DatabaseError as exc:
            db.close()
            raise StoreError(f"cannot open the store {path}: {exc}") from exc
        if new_file:
            try:
                os.chmod(path, 0o600)
            except OSError:  # pragma: no cover - e.g. a filesystem without permissions
                pass
        return db

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
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
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def connection_count(self) -> int:
        """Open connections over all threads (a long-lived store must not collect one per finished thread)."""
        with self._lock:
            return len(self._all)

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

    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def checkpoint(self) -> None:
        """Copy the WAL into the main file and truncate it (a no-op while another process is mid-read)."""
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError as exc:  # pragma: no cover - busy
            log.warning("could not checkpoint the store: %s", exc)

    def integrity_check(self) -> str:
        return str(self.conn.execute("PRAGMA integrity_check").fetchone()[0])
