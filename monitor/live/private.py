"""Files and folders that hold clinical data: readable by their owner only, like the store.

Every output that carries a patient's points, marks or summaries (JSONL,
exports, reports, session summaries, analysis tables) is created through
these helpers: files ``0600``, folders the helpers create ``0700``. Folders
that already exist keep their permissions (the user's own choice); a file
that already exists is tightened to ``0600`` when it is written again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

from monitor.model.datadir import PRIVATE_DIR_MODE, private_dir

PRIVATE_FILE_MODE = 0o600
__all__ = ["PRIVATE_DIR_MODE", "PRIVATE_FILE_MODE", "open_private", "private_dir", "write_private_text"]


def open_private(path: str | os.PathLike[str], mode: str = "w", *, encoding: str | None = "utf-8",
                 newline: str | None = None) -> IO[Any]:
    """Open ``path`` for writing (``"w"``, ``"a"``, ``"wb"``, ``"ab"``) as an owner-only file; its folder is made
    with :func:`private_dir` if missing."""
    if mode not in ("w", "a", "wb", "ab"):
        raise ValueError(f"open_private writes: mode must be w, a, wb or ab, not {mode!r}")
    target = Path(path)
    private_dir(target.parent)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(target, flags, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # an existing file keeps its mode through os.open: tighten it
    except (AttributeError, OSError):  # pragma: no cover - a platform or filesystem without permissions
        pass
    if "b" in mode:
        return os.fdopen(fd, mode)
    return os.fdopen(fd, mode, encoding=encoding, newline=newline)


def write_private_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to an owner-only file (see :func:`open_private`); returns the path."""
    with open_private(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)


def write_private_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to an owner-only file; returns the path."""
    with open_private(path, "wb") as f:
        f.write(data)
    return Path(path)
