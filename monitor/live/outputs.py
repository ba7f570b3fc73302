"""Simple point outputs: one JSON object per line, to a file or stdout (record types: docs/jsonl.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Any

from calibration.jsonable import to_jsonable
from monitor.live.events import Mark, Point, SessionInfo, Status
from monitor.live.heatmap import RollingHeatmap
from monitor.live.private import open_private


class JsonlSink:
    """Writes the session's records as JSON lines, flushed at once so a crash loses nothing written.

    ``path`` "-" means stdout. Every line carries a ``type`` field and the
    session id (``session``): one "session" record first (model id, class
    labels, source, settings), then "point" and "mark" records in the order
    they happened. Appending to an existing file adds a new session's records.
    """

    output_name = "jsonl"

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
            self._file = open_private(self.path, "a")  # clinical data: owner-only, like the store
        self.session_id = session.session_id
        info = session.to_dict()
        del info["session_id"]
        self._write({"type": "session", "session": session.session_id, **to_jsonable(info)})

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
