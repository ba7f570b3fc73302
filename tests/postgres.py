"""A real, throwaway PostgreSQL server for the store's tests (no mocks: the SQL must run on the real thing).

Why a server per test run and a database per test: the store's PostgreSQL
backend is only trustworthy if its migrations, durability checks and deletion
run against PostgreSQL itself, and tests must not see each other's rows.

The cluster lives in a folder made directly under the system's temporary
folder (pytest's own folders are owner-only under root, and the ``postgres``
user could not enter them). Run as root (CI), the folder is given to the
``postgres`` user and the server runs as that user, since PostgreSQL refuses
to run as root. The binaries come from ``pg_config --bindir`` or Debian's
``/usr/lib/postgresql/<version>/bin``; without them the tests fail and say
which package to install.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

MISSING = ("PostgreSQL server binaries (initdb, pg_ctl) not found: install the Debian package `postgresql` "
           "(sudo apt-get install -y postgresql), as the README's test command does")
SUPERUSER = "postgres"


def find_bindir() -> Path:
    """The folder holding initdb and pg_ctl; AssertionError naming the Debian package when there is none."""
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            candidates.append(Path(out.stdout.strip()))
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    raise AssertionError(MISSING)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PostgresServer:
    """initdb + pg_ctl start in a fresh folder; ``new_database()`` gives each test its own database."""

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="mood-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root
        self.port = free_port()
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:  # PostgreSQL will not run as root: run it as the postgres user
            user = pwd.getpwnam("postgres")
            self._as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
            os.chown(self.root, user.pw_uid, user.pw_gid)
        os.chmod(self.root, 0o700)
        self._names = itertools.count()

    def run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.bindir / tool), *args], capture_output=True, text=True, check=check,
                              cwd=self.root, **self._as)

    def start(self) -> "PostgresServer":
        self.run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth-local=trust",
                 "--auth-host=scram-sha-256", "--no-instructions", "-E", "UTF8", "--locale=C")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                       f"unix_socket_directories = '{self.socket_dir}'\nfsync = on\nsynchronous_commit = on\n"
                       "max_connections = 200\nshared_buffers = 32MB\n")
        self.pg_ctl_start()
        return self

    def pg_ctl_start(self) -> None:
        out = self.run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60",
                       "start", check=False)
        if out.returncode != 0:
            log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() else ""
            raise AssertionError(f"pg_ctl start failed: {out.stdout}{out.stderr}\n{log[-3000:]}")

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart_after_crash(self) -> None:
        """``pg_ctl stop -m immediate`` (no shutdown checkpoint: a crash) and start again (crash recovery)."""
        self.stop("immediate")
        self.pg_ctl_start()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres", user: str = SUPERUSER, password: str | None = None,
            tcp: bool = False) -> str:
        """A URL for the store: over the unix socket (trusted) or over TCP (password checked)."""
        auth = user if password is None else f"{user}:{password}"
        if tcp:
            return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"
        return f"postgresql://{auth}@/{database}?host={self.socket_dir}&port={self.port}"

    def admin(self, sql: str, database: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement as the superuser, outside a transaction (CREATE DATABASE, VACUUM)."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            cur = conn.execute(sql)
            return list(cur.fetchall()) if cur.description else []

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.admin(f"CREATE DATABASE {name}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        from urllib.parse import urlsplit

        name = urlsplit(url).path.lstrip("/")
        self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def relation_files(self, url: str, relations: list[str] | None = None) -> list[Path]:
        """The files holding a database's tables, their indexes and TOAST (to search raw bytes; run as root)."""
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            data_dir = Path(conn.execute("SHOW data_directory").fetchone()[0])
            rows = conn.execute(
                "SELECT pg_relation_filepath(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname IN ('public', 'pg_toast') AND c.relkind IN ('r', 'i', 't') "
                "AND pg_relation_filepath(c.oid) IS NOT NULL").fetchall()
        files: list[Path] = []
        for (rel,) in rows:
            first = data_dir / rel
            files += [p for p in first.parent.glob(first.name + "*")  # its 1 GB segments, not its FSM or VM
                      if p.name == first.name or p.name.startswith(first.name + ".")]
        return files

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.run("pg_isready", "-h", str(self.socket_dir), "-p", str(self.port), check=False).returncode:
            if time.monotonic() > deadline:
                raise AssertionError("the PostgreSQL server did not come back")
            time.sleep(0.2)
