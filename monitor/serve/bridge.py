"""The one hand-off between the pipeline's dispatch thread and the dashboard's event loop.

The pipeline must never wait on the dashboard, so ``post`` only appends to a
bounded inbox under a short lock and asks the loop for at most one wake-up at
a time (a burst of points costs one ``call_soon_threadsafe``, not one each).
When the loop falls so far behind that the inbox is full, events are dropped
and counted instead of growing memory or blocking the caller. Everything else
in the server runs on the loop thread and shares nothing with the pipeline.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from typing import Any, Callable

log = logging.getLogger(__name__)

#: What the loop does with one event: ``deliver(kind, value)``, on the loop thread.
Deliver = Callable[[str, Any], None]


class ThreadBridge:
    """A bounded inbox from any thread to one asyncio loop, with at most one pending wake-up."""

    def __init__(self, size: int, deliver: Deliver) -> None:
        self.size = size
        self.dropped = 0
        self._deliver = deliver
        self._lock = threading.Lock()
        self._inbox: deque[tuple[str, Any]] = deque()
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start handing events to ``loop`` (called on the loop thread once it runs)."""
        self._loop = loop

    def detach(self) -> None:
        """The loop has stopped: later events are ignored rather than queued for nobody."""
        self._loop = None

    # ---- any thread ----------------------------------------------------------------------------
    def post(self, kind: str, value: Any) -> None:
        """Queue an event for the loop; never blocks, drops (and counts) it when the inbox is full."""
        loop = self._loop
        if loop is None:
            return
        with self._lock:
            if len(self._inbox) >= self.size:
                self.dropped += 1
                if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                    log.warning("dashboard is not keeping up: %d events dropped", self.dropped)
                return
            self._inbox.append((kind, value))
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            loop.call_soon_threadsafe(self.drain)
        except RuntimeError:  # the loop has already stopped
            pass

    def call(self, callback: Callable[[], object]) -> bool:
        """Run ``callback`` on the loop, after the wake-ups already asked for; False when no loop runs.

        For the few control events (end of session, shutdown) that must not be dropped with a full inbox.
        """
        loop = self._loop
        if loop is None:
            return False
        try:
            loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop has already stopped
            return False
        return True

    # ---- loop thread ---------------------------------------------------------------------------
    def drain(self) -> None:
        """Deliver every queued event in order; one that fails is logged and the rest still go."""
        with self._lock:
            items = list(self._inbox)
            self._inbox.clear()
            self._wake_pending = False
        for kind, value in items:
            try:
                self._deliver(kind, value)
            except Exception:  # noqa: BLE001 - one bad event must not stop the stream
                log.exception("dashboard could not forward a %s", kind)
