"""The SQLite file itself: where it lives, and one connection per thread set up for durability.

Why per-thread connections: a ``sqlite3.Connection`` must not be used by two
threads at once, while the monitor's writer thread, the dashboard's history
requests and the CLIs all read or write. In WAL mode readers and the writer
overlap; ``synchronous=FULL`` makes every COMMIT survive a killed process and a
power cut. Rows come back as ``sqlite3.Row`` so code reads columns by name.

``Backend`` is the interface the rest of ``monitor.history`` programs against;
``Database`` (here) and ``monitor.history.postgres.PgDatabase`` implement it.
Each keeps its own dialect: the queries elsewhere are written once, in SQL both
accept, with ``?`` placeholders.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Generic, Iterable, Iterator, Protocol, Sequence, TypeVar

from monitor.history.target import DB_FILENAME, default_db_path
from monitor.model.datadir import DATA_DIR_ENV, default_data_dir

log = logging.getLogger(__name__)

__all__ = ["DATA_DIR_ENV", "DB_FILENAME", "Backend", "Connection", "Cursor", "Database", "StoreError",
           "default_data_dir", "default_db_path"]


class StoreError(RuntimeError):
    """The store cannot be used (newer schema, unreadable file); the message says which."""


class Cursor(Protocol):
    """What a query returns on either backend: rows readable by column name and by position."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """A thread's connection: ``sqlite3.Connection`` itself, or the PostgreSQL wrapper with the same calls."""

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Cursor: ...


class Backend(Protocol):
    """The store's database, SQLite or PostgreSQL: connections, transactions and each dialect's own jobs."""

    #: The SQLite file, or the PostgreSQL URL without its password (for messages).
    @property
    def path(self) -> Path | str: ...

    #: The folder kept audio goes under (the SQLite file's folder; the data folder with PostgreSQL).
    @property
    def files_dir(self) -> Path: ...

    #: The driver's exception classes (what a failed write raises).
    @property
    def errors(self) -> tuple[type[Exception], ...]: ...

    @property
    def conn(self) -> Connection: ...

    def transaction(self, immediate: bool = True) -> AbstractContextManager[Connection]: ...

    def release_thread_connection(self) -> None: ...

    def close(self) -> None: ...

    def connection_count(self) -> int: ...

    def schema_version(self) -> int: ...

    def checkpoint(self) -> None: ...

    def integrity_check(self) -> str: ...

    def fetch_tuples(self, sql: str, parameters: Sequence[Any]) -> tuple[list[str], list[tuple[Any, ...]]]: ...

    # migrations (monitor.history.schema)
    def lock_schema(self, conn: Connection) -> int: ...

    def ddl(self, statement: str) -> str: ...

    def set_schema_version(self, conn: Connection, version: int) -> None: ...

    # deletion that leaves no trace (monitor.history.erase)
    def erasing(self) -> AbstractContextManager[None]: ...

    def scrub(self, tables: Sequence[str]) -> None: ...


C = TypeVar("C", bound="_Closable")


class _Closable(Protocol):
    def close(self) -> None: ...


class PerThreadConnections(Generic[C]):
    """One connection per thread, every one tracked (both backends).

    Why: a connection must not be used by two threads at once, while the writer thread, the dashboard's
    history requests and the CLIs all read or write; tracking them lets ``close()`` reach every one and a
    finished thread give its own back, so a long-lived store does not collect one per thread.
    """

    errors: tuple[type[Exception], ...] = ()

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[C] = []
        self._lock = threading.Lock()

    def _connect(self) -> C:  # pragma: no cover - each backend's own
        raise NotImplementedError

    def _usable(self, conn: C) -> bool:
        """Whether this thread's connection can still be used (a backend whose server can drop it says no)."""
        return True

    def _track(self, conn: C) -> C:
        with self._lock:
            self._all.append(conn)
        return conn

    @property
    def conn(self) -> C:
        """This thread's connection (created on first use, and again after the old one broke)."""
        conn: C | None = getattr(self._local, "conn", None)
        if conn is not None and not self._usable(conn):
            self.release_thread_connection()
            conn = None
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def connection_count(self) -> int:
        """Open connections over all threads."""
        with self._lock:
            return len(self._all)

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
        """Close every thread's connection."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except self.errors:  # pragma: no cover - already broken
                pass
        self._local = threading.local()


class Database(PerThreadConnections[sqlite3.Connection]):
    """One SQLite file; each thread gets its own connection on first use (thread-safe)."""

    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)

    @property
    def files_dir(self) -> Path:
        return self.path.parent

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
        return self._track(conn)

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

    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def fetch_tuples(self, sql: str, parameters: Sequence[Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Column names and plain tuples (a big read, e.g. 100k points, without a row object per row)."""
        cursor = self.conn.cursor()
        cursor.row_factory = None
        cursor.execute(sql, parameters)
        return [d[0] for d in cursor.description], cursor.fetchall()

    def lock_schema(self, conn: Connection) -> int:
        """Inside the migration's BEGIN IMMEDIATE (the write lock is held already): the version now."""
        return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def ddl(self, statement: str) -> str:
        """The migration steps are written in SQLite's dialect."""
        return statement

    def set_schema_version(self, conn: Connection, version: int) -> None:
        conn.execute(f"PRAGMA user_version = {int(version)}")

    @contextmanager
    def erasing(self) -> Iterator[None]:
        """Deletes inside zero the freed pages (``secure_delete``), so deleted rows do not linger in the file."""
        conn = self.conn
        conn.execute("PRAGMA secure_delete = ON")
        try:
            yield
        finally:
            conn.execute("PRAGMA secure_delete = OFF")

    def scrub(self, tables: Sequence[str]) -> None:
        """After a deletion: the WAL still holds the deleted rows until it is copied back and truncated."""
        self.checkpoint()

    def checkpoint(self) -> None:
        """Copy the WAL into the main file and truncate it (a no-op while another process is mid-read)."""
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError as exc:  # pragma: no cover - busy
            log.warning("could not checkpoint the store: %s", exc)

    def integrity_check(self) -> str:
        return str(self.conn.execute("PRAGMA integrity_check").fetchone()[0])
