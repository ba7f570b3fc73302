"""Simple point outputs: one JSON object per line, to a file or stdout."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Any

from monitor.live.events import Mark, Point, SessionInfo, Status
from monitor.live.heatmap import RollingHeatmap


class JsonlSink:
    """Writes each point (and mark) as one JSON line, flushed at once so a crash loses nothing written.

    ``path`` "-" means stdout. Lines carry a ``type`` field: "point" or "mark".
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._file: IO[str] | None = None
        self.session_id = ""

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        if self._file is None:  # closed: the pipeline accepts nothing after closing its outputs
            return
        self._file.write(line)
        self._file.flush()

    def start(self, session: SessionInfo, heatmap: RollingHeatmap) -> None:
        if self.path == "-":
            self._file = sys.stdout
        else:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        self.session_id = session.session_id

    def point(self, point: Point) -> None:
        self._write({"type": "point", "session": self.session_id, **point.to_dict()})

    def mark(self, mark: Mark) -> None:
        self._write({"type": "mark", "session": self.session_id, **mark.to_dict()})

    def status(self, status: Status) -> None:
        pass

    def close(self) -> None:
        if self._file is not None and self._file is not sys.stdout:
            self._file.close()
        self._file = None
