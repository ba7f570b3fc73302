"""Closing sessions whose monitor died: who is writing a session, and whether it is still alive.

Why: a monitor killed mid-session (SIGKILL, power cut) never records an end
time, and a session without one looks as if it were still running. Every
session records its writer (``host:pid``) and a heartbeat; the next open of the
store closes those whose writer is gone, at their last point.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from monitor.history.database import Backend

log = logging.getLogger(__name__)

#: A session whose writer has not been heard from for this long is treated as dead.
STALE_AFTER_S = 120.0


def writer_id() -> str:
    """This process, as stored in ``sessions.writer``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def writer_alive(writer: str | None) -> bool | None:
    """True/False when the writer ran on this host and its pid can be checked; None when unknown."""
    if not writer or ":" not in writer:
        return None
    host, _, pid_text = writer.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit() or os.name != "posix":
        return None  # on Windows os.kill(pid, 0) would terminate the process: rely on the heartbeat
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_unclean(db: Backend, stale_after_s: float = STALE_AFTER_S) -> list[str]:
    """Close sessions whose writer died (no end time): end = their last point. Returns their ids.

    A session still being written by a live process (checked by pid on this
    host, else by a heartbeat newer than ``stale_after_s``) is left alone.
    """
    now = time.time()
    rows = db.conn.execute("SELECT id, session_id, writer, heartbeat_at, started_at FROM sessions "
                           "WHERE ended_at IS NULL").fetchall()
    closed = []
    for row in rows:
        alive = writer_alive(row["writer"])
        silent_for = now - (row["heartbeat_at"] or row["started_at"])
        if alive is True and silent_for < 86_400:  # a live writer (pid reuse aside) may just be paused
            continue
        if alive is None and silent_for < stale_after_s:
            continue
        with db.transaction() as c:
            last, audio = c.execute("SELECT MAX(wall_time) AS last, MAX(t_end) AS audio FROM points WHERE session = ?",
                                    (row["id"],)).fetchone()
            c.execute("UPDATE sessions SET ended_at = ?, end_state = 'recovered', audio_seconds = ? "
                      "WHERE id = ? AND ended_at IS NULL",
                      (float(last if last is not None else row["started_at"]), audio, row["id"]))
        closed.append(str(row["session_id"]))
        log.warning("session %s had not been closed (the monitor stopped abruptly); closed at its last point",
                    row["session_id"])
    return closed
