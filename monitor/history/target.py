"""Where the store is: the one ``--db`` flag, a SQLite file or a ``postgresql://`` URL, and its display name.

Why one module: ``--db`` is offered by the monitor, ``analyze``, ``report`` and
``data``; one definition keeps their help and meaning identical. A URL may
carry a password, so every message and log line names the store through
``display_name``, which leaves the password out.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from monitor.model.datadir import default_data_dir

DB_FILENAME = "mood-monitor.sqlite"
URL_SCHEMES = ("postgresql://", "postgres://")

DB_HELP = ("the store: a SQLite file, or a postgresql:// URL (e.g. postgresql://monitor@db.clinic/mood); "
           "give the password in ~/.pgpass or PGPASSWORD rather than in the URL "
           "(default: DATA_DIR/mood-monitor.sqlite)")
DATA_DIR_HELP = ("data folder (default: $MOOD_MONITOR_DATA_DIR or ~/.local/share/mood-monitor); "
                 "it holds the SQLite file, and kept audio with either backend")

def is_postgres_url(target: object) -> bool:
    """Whether ``target`` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(target, str) and target.lower().startswith(URL_SCHEMES)


def display_name(url: str) -> str:
    """The URL without its password (``user:secret@host`` becomes ``user@host``; ``password=`` is removed)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}@{hostinfo}"
    query = "&".join(kv for kv in parts.query.split("&") if kv and not kv.lower().startswith("password="))
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def url_password(url: str) -> str | None:
    """The password written into the URL, if any (so messages can be scrubbed of it)."""
    parts = urlsplit(url)
    if parts.password:
        return parts.password
    match = re.search(r"(?:^|&)password=([^&]*)", parts.query, flags=re.IGNORECASE)
    return match.group(1) if match and match.group(1) else None


def redact(text: str, url: str) -> str:
    """``text`` with the URL's password (raw and percent-decoded) replaced by ``***``."""
    from urllib.parse import unquote

    secret = url_password(url)
    if not secret:
        return text
    for variant in {secret, unquote(secret)}:
        if variant:
            text = text.replace(variant, "***")
    return text


def default_db_path(data_dir: str | Path | None = None) -> Path:
    """DATA_DIR/mood-monitor.sqlite: DATA_DIR is ``data_dir``, $MOOD_MONITOR_DATA_DIR or ~/.local/share/mood-monitor."""
    return (Path(data_dir).expanduser() if data_dir else default_data_dir()) / DB_FILENAME


def add_db_argument(parser: Any, data_dir: bool = True, help: str = DB_HELP) -> None:
    """Add ``--db`` (and ``--data-dir``) to a parser or argument group: the one definition of the flag."""
    parser.add_argument("--db", metavar="PATH_OR_URL", help=help)
    if data_dir:
        parser.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)


def store_target(db: str | Path | None, data_dir: str | Path | None = None) -> str | Path:
    """What ``--db`` and ``--data-dir`` name: the URL as given, a SQLite file, or the default file."""
    if db is not None and is_postgres_url(str(db)):
        return str(db)
    return Path(db).expanduser() if db else default_db_path(data_dir)


def namespace_target(args: argparse.Namespace) -> str | Path:
    """``store_target`` of a parsed command line that has ``--db`` (and maybe ``--data-dir``)."""
    return store_target(getattr(args, "db", None), getattr(args, "data_dir", None))
