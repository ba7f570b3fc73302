"""Blocking calls (store reads, a mark fanned out to slow outputs) run off the server's event loop.

Why not ``asyncio.to_thread``: its executor refuses new work once the
interpreter has begun shutting down, and that is exactly when a lingering
dashboard is still served (``--linger`` keeps the page up from an exit
handler, after the main program has returned). The history API must answer
for as long as the page is served, so the server owns its threads: started
with the server, stopped with it, and never created late.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_Job = tuple[Callable[[], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


class BlockingCalls:
    """A few threads of the server's own that run blocking callables for coroutines on its loop.

    ``on_thread_exit`` runs on each thread as it ends (the store closes that thread's connection).
    """

    def __init__(self, threads: int = 2, name: str = "dashboard-call",
                 on_thread_exit: Callable[[], object] | None = None) -> None:
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._on_exit = on_thread_exit
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(threads)]
        self._started = False

    def start(self) -> None:
        """Start the threads (before the interpreter could be shutting down: with the server)."""
        if not self._started:
            self._started = True
            for thread in self._threads:
                thread.start()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``await`` ``fn(*args, **kwargs)`` run on one of the threads; its exception is raised here."""
        if not self._started:
            raise RuntimeError("the server's worker threads are not running")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((lambda: fn(*args, **kwargs), loop, future))
        return await future

    def stop(self, timeout: float = 5.0) -> None:
        """Let the threads finish the job in hand and end; bounded wait."""
        if not self._started:
            return
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    def _work(self) -> None:
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                call, loop, future = job
                try:
                    result = call()
                except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                    _settle(loop, future, exc, error=True)
                else:
                    _settle(loop, future, result, error=False)
        finally:
            if self._on_exit is not None:
                try:
                    self._on_exit()
                except Exception:  # noqa: BLE001
                    log.debug("dashboard worker thread clean-up failed", exc_info=True)


def _settle(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], value: Any, *, error: bool) -> None:
    """Complete ``future`` on its loop (unless it was cancelled meanwhile, or the loop is gone)."""
    def done() -> None:
        if future.done():
            return
        if error:
            future.set_exception(value)
        else:
            future.set_result(value)

    try:
        loop.call_soon_threadsafe(done)
    except RuntimeError:  # the loop has closed: nobody is waiting any more
        pass
