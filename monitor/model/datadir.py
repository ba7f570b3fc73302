"""Where the monitor keeps its files: the store, and weights converted once from installed packages.

One definition for every layer that writes there; the folder is private to
the user (0700), because the store in it holds clinical data.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "MOOD_MONITOR_DATA_DIR"


def default_data_dir() -> Path:
    """$MOOD_MONITOR_DATA_DIR, else ~/.local/share/mood-monitor."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "mood-monitor"


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) readable by the owner only; an existing folder is left as it is."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path
