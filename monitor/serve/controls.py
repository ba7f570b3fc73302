"""What the dashboard may ask of the running session: pause, resume, marks (made, edited, deleted), the end.

A Protocol rather than the pipeline's class, so the server stays testable with
a stand-in and the dependency is spelled out where the server is built
(``DashboardServer(config, controls=pipeline)``). ``MonitorPipeline`` fits it.
"""

from __future__ import annotations

from typing import Protocol

from monitor.live.events import Mark


class SessionControls(Protocol):
    """The session as the dashboard's clients may steer it; every member is safe to call from any thread."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    @property
    def paused(self) -> bool: ...

    @property
    def session_time(self) -> float: ...

    def add_mark(self, text: str, t: float | None = None, source: str = "dashboard") -> Mark:
        """Record a mark in every output (and so back to the dashboard); RuntimeError once outputs are closing."""
        ...

    def edit_mark(self, t: float, wall_time: float, text: str | None) -> Mark:
        """Change a mark's text, or delete it (``text=None``), in every output; returns the mark as it was.

        KeyError: no such mark; RuntimeError: the outputs are closing.
        """
        ...

    def stop(self) -> None:
        """End the session as Ctrl-C would: what is queued is still analysed and stored."""
        ...


def session_time(controls: SessionControls | None) -> float | None:
    """The session clock, or None without controls: a failing clock must not break a message."""
    if controls is None:
        return None
    try:
        return float(controls.session_time)
    except Exception:  # noqa: BLE001 - a message goes out without the time rather than not at all
        return None
