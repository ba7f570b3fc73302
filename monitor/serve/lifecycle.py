"""The dashboard server's life as one state, with every allowed transition listed in one table.

Two threads move it: the pipeline's (``start()``, ``close()``) and the
server's loop thread (everything else; ``end_linger()`` from any thread only
asks the loop). A transition is a compare-and-set under one lock, so a
``close()`` racing the loop's own shutdown cannot both win, and "already done"
is a refused transition rather than one more flag.

    NEW ──▶ STARTING ──▶ LIVE ──▶ ENDING ──▶ ENDED ──▶ SHUTTING_DOWN ──▶ CLOSED
       start()     port bound  close()   end sent   linger over,   loop stopped
                                                    end_linger()

Besides: LIVE goes straight to ENDED when the server is stopped without
``close()`` (``end_linger``/``wait_closed``); STARTING goes to CLOSED when the
port cannot be bound; any started phase goes to CLOSED if the loop thread stops.
"""

from __future__ import annotations

import enum
import threading


class Phase(enum.Enum):
    """Where the server is; see the module docstring for the transitions."""

    NEW = "new"  # constructed; start() not called
    STARTING = "starting"  # the loop thread is binding the port
    LIVE = "live"  # serving the session
    ENDING = "ending"  # close() was called: ``end`` is queued behind the last events
    ENDED = "ended"  # ``end`` was sent; still serving (the linger): snapshots say ended, controls are refused
    SHUTTING_DOWN = "shutting_down"  # flushing queues and closing connections; new websockets get 503
    CLOSED = "closed"  # the loop has stopped (or never started); events are ignored


#: The only transitions there are: phase -> the phases it may move to.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.NEW: frozenset({Phase.STARTING}),
    Phase.STARTING: frozenset({Phase.LIVE, Phase.CLOSED}),
    Phase.LIVE: frozenset({Phase.ENDING, Phase.ENDED, Phase.CLOSED}),
    Phase.ENDING: frozenset({Phase.ENDED, Phase.CLOSED}),
    Phase.ENDED: frozenset({Phase.SHUTTING_DOWN, Phase.CLOSED}),
    Phase.SHUTTING_DOWN: frozenset({Phase.CLOSED}),
    Phase.CLOSED: frozenset(),
}


class Lifecycle:
    """The current :class:`Phase`, moved only along :data:`TRANSITIONS`; safe from any thread."""

    def __init__(self) -> None:
        self._phase = Phase.NEW
        self._changed = threading.Condition()
        #: Why the server closed without going live (the bind error), for start() to report.
        self.error: BaseException | None = None

    @property
    def phase(self) -> Phase:
        return self._phase

    def advance(self, to: Phase, error: BaseException | None = None) -> bool:
        """Move to ``to`` if the table allows it from the current phase; False (nothing changes) otherwise."""
        with self._changed:
            if to not in TRANSITIONS[self._phase]:
                return False
            self._phase = to
            if error is not None:
                self.error = error
            self._changed.notify_all()
            return True

    def wait_started(self, timeout: float) -> bool:
        """Block until the start is decided (LIVE or CLOSED, or later); False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._phase not in (Phase.NEW, Phase.STARTING), timeout)

    @property
    def ended(self) -> bool:
        """``end`` has gone out: what snapshots report, and why controls are refused."""
        return self._phase in (Phase.ENDED, Phase.SHUTTING_DOWN, Phase.CLOSED)

    @property
    def accepting(self) -> bool:
        """New websocket clients are taken (the linger included), not once the shutdown has begun."""
        return self._phase in (Phase.STARTING, Phase.LIVE, Phase.ENDING, Phase.ENDED)
