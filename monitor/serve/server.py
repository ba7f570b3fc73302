"""The dashboard server: live points and heat maps pushed over websockets, and the page itself.

One port serves both: plain HTTP GETs get the bundled page (monitor/serve/static) or
the history API, a websocket upgrade on ``/ws`` gets the live session. It runs
on the ``websockets`` library in its own thread and event loop, so nothing it
does (a slow browser, a stalled tablet, TLS) can slow the pipeline:

    pipeline dispatch thread ── point/mark/status ──▶ ThreadBridge ──▶ loop thread: ClientHub
                                                      (bounded inbox)     │ per-client bounded send queue
                                                                          ▼
                                                        client 1 … client N (each its own sender task)

The parts, one job each: ``bridge`` (the only state shared with the pipeline's
thread), ``hub`` (clients, their queues, snapshots, heat map frames),
``router`` (the answer to every HTTP request, access checks included: pure
and unit-tested), ``lifecycle`` (the one state the server is in),
``blocking`` (its own threads for store reads and marks) and ``controls``
(what the page may ask of the session, passed in at construction). This
module wires them to sockets and threads. The wire format lives in
monitor/serve/protocol.py and docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import atexit
import email.utils
import logging
import re
import secrets
import socket
import ssl
import sys
import threading
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from monitor.serve.blocking import BlockingCalls
from monitor.serve.config import ServerConfig, is_loopback
from monitor.serve.controls import SessionControls
from monitor.serve.channel import SessionChannel
from monitor.serve.lifecycle import Lifecycle, Phase
from monitor.serve.protocol import dumps
from monitor.serve.router import (AcceptWebsocket, HttpRequest, QueryHistory, QueryPatients, Refuse, Router, ServePage,
                                  load_pages)

if TYPE_CHECKING:  # pragma: no cover
    from monitor.history.store import Store
    from monitor.live.events import Mark, Point, SessionInfo, Status
    from monitor.live.heatmap import RollingHeatmap

__all__ = ["DashboardServer", "ServerConfig", "SessionControls", "http_response", "is_loopback", "json_response",
           "ssl_context"]

log = logging.getLogger(__name__)
#: The library's own per-connection chatter ("connection open", "HTTP response sent") is noise at INFO.
WEBSOCKETS_LOG = logging.getLogger(__name__ + ".websockets")

_SECRETS = re.compile(r"(token=)[^&\s\"']+|((?:authorization|cookie):\s*)\S.*|(bearer\s+)\S+", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` without the access token: ``?token=…`` values, ``Authorization`` headers and bearer tokens."""
    return _SECRETS.sub(lambda m: (m.group(1) or m.group(2) or m.group(3)) + "[redacted]", text)


class _RedactSecrets(logging.Filter):
    """Keeps the access token out of the websockets library's request logs (shown with -v)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logged as it is
            return True
        clean = redact(text)
        if clean != text:
            record.msg, record.args = clean, None
        return True


WEBSOCKETS_LOG.addFilter(_RedactSecrets())


class DashboardServer:
    """A ``PointSink`` that serves the live dashboard; see the module docstring.

    ``controls`` (the pipeline, or None for a view-only dashboard) receives
    pause/resume and marks from the page. ``store`` (or None) backs the history endpoint.
    """

    output_name = "dashboard"

    def __init__(self, config: ServerConfig | None = None, store: Store | None = None,
                 controls: SessionControls | None = None) -> None:
        self.config = config or ServerConfig()
        self.store = store
        self.controls = controls
        self.token = self.config.token or secrets.token_urlsafe(18)
        self.url: str | None = None
        self.port: int | None = None
        self.session: SessionInfo | None = None
        self.heatmap: RollingHeatmap | None = None
        self.stats = {"connections": 0, "refused": 0, "slow_disconnects": 0, "errors_sent": 0, "points": 0}
        self._life = Lifecycle()
        self._router = Router(self.config, self.token, load_pages(), history=store is not None)
        # Store reads and marks run on the server's own threads: they keep working during a linger, when
        # the interpreter is already shutting down and asyncio.to_thread refuses new work.
        self._calls = BlockingCalls(on_thread_exit=store.release_thread_connection if store is not None else None)
        self._channel = SessionChannel(self.config, controls, self._calls, history=store is not None, stats=self.stats)
        self._hub, self._bridge = self._channel.hub, self._channel.bridge
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None  # loop thread: set to shut down

    @property
    def inbox_dropped(self) -> int:
        """Events the pipeline handed over that the server could not take (only if its loop stalls)."""
        return self._bridge.dropped

    @property
    def client_count(self) -> int:
        return len(self._hub.clients)

    @property
    def phase(self) -> Phase:
        return self._life.phase

    # ---- PointSink (called from the pipeline's dispatch thread) -----------------------------
    def start(self, session: SessionInfo, heatmap: RollingHeatmap) -> None:
        """Bind, start the loop thread and print the page's address; raises if the port cannot be used."""
        ssl_context = self._ssl_context()  # a bad certificate fails here, before anything runs
        if not self._life.advance(Phase.STARTING):
            raise RuntimeError(f"dashboard server cannot start: it is {self._life.phase.value}")
        self.session, self.heatmap = session, heatmap
        self._channel.bind(session, heatmap)
        if WEBSOCKETS_LOG.level == logging.NOTSET:
            WEBSOCKETS_LOG.setLevel(logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.WARNING)
        self._calls.start()
        self._thread = threading.Thread(target=self._run_loop, args=(ssl_context,), name="dashboard", daemon=True)
        self._thread.start()
        if not self._life.wait_started(30):
            raise RuntimeError("dashboard server did not start within 30 s")
        if self._life.error is not None:
            raise RuntimeError(f"dashboard: cannot serve on {self.config.host}:{self.config.port}: "
                               f"{self._life.error} (choose another --port, or --port 0 for any free one)"
                               ) from self._life.error
        if not is_loopback(self.config.host):
            log.warning("dashboard listens on %s: anyone who can reach port %d and has the link can watch this "
                        "session%s", self.config.host, self.port,
                        "" if self.config.tls else "; the traffic is not encrypted (use --certfile/--keyfile)")
        print(f"dashboard: {self.url}", file=sys.stderr, flush=True)
        if self.config.host in ("0.0.0.0", "::", ""):
            log.info("from another computer, open it with this computer's address instead of %s (this computer "
                     "is %r)", self.config.host or "the empty host", socket.gethostname())

    def point(self, point: Point) -> None:
        self._channel.point(point)

    def mark(self, mark: Mark) -> None:
        self._channel.mark(mark)

    def edit_mark(self, old: Mark, new: Mark | None) -> None:
        """A mark's new text, or its deletion (``new=None``), for every viewer (the pipeline calls this)."""
        self._channel.edit_mark(old, new)

    def status(self, status: Status) -> None:
        self._channel.status(status)

    def close(self) -> None:
        """End the session for the dashboard: every queued point goes out, then an ``end`` message.

        Without a linger, connections are then closed with 1001 "session ended" before this returns.
        With ``linger_s`` this returns at once and the page stays served (the last state on screen,
        reconnects still get the snapshot) until the linger is over; an exit handler keeps the
        process alive for it, and Ctrl-C cuts it short.
        """
        if not self._life.advance(Phase.ENDING):
            return  # never started, or already ending
        # Not through the inbox: the end must not be dropped when it is full; it still comes after every event.
        self._bridge.call(self._end_session)
        thread = self._thread
        if self.config.linger_s > 0 and thread is not None and thread.is_alive():
            log.info("session ended; the dashboard stays up for %.0f s (Ctrl-C to quit sooner)", self.config.linger_s)
            atexit.register(self.wait_closed)
            return
        self._shutdown_now()

    def end_linger(self) -> None:
        """Stop serving now instead of at the end of the linger."""
        self._shutdown_now()

    def wait_closed(self) -> None:
        """Block until the server has stopped (the end of a linger); Ctrl-C stops it at once."""
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(0.25)
        except KeyboardInterrupt:
            log.info("dashboard: closing")
        self._shutdown_now()

    def _shutdown_now(self) -> None:
        """Ask the loop to shut down and wait for its thread (bounded: closing must not hang the pipeline)."""
        thread = self._thread
        if thread is None:
            return
        if thread.is_alive() and self._bridge.call(self._begin_shutdown):
            thread.join(timeout=self.config.flush_timeout_s + 20)
            if thread.is_alive():
                log.warning("dashboard did not shut down cleanly within %.0f s", self.config.flush_timeout_s + 20)
        thread.join(timeout=5)

    # ---- loop thread: life and death ---------------------------------------------------------
    def _run_loop(self, ssl_context: ssl.SSLContext | None) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main(ssl_context))
        except BaseException as exc:  # noqa: BLE001 - reported to start() or logged
            if self._life.phase is Phase.STARTING:
                self._life.advance(Phase.CLOSED, error=exc)  # start() raises it
            else:
                log.exception("dashboard server stopped")
        finally:
            self._bridge.detach()
            try:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                if pending:  # let what is finishing finish, then cancel stragglers
                    loop.run_until_complete(asyncio.wait(pending, timeout=1.0))
                    for task in pending:
                        task.cancel()
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                self._calls.stop()
                self._life.advance(Phase.CLOSED)

    async def _main(self, ssl_context: ssl.SSLContext | None) -> None:
        cfg = self.config
        self._stop = asyncio.Event()
        server = await serve(
            self._handler, cfg.host, cfg.port, process_request=self._process_request, ssl=ssl_context,
            compression=None,  # small messages, many clients: CPU matters more than bytes on a LAN
            max_size=cfg.max_message_bytes, max_queue=16, ping_interval=cfg.ping_interval_s,
            ping_timeout=cfg.ping_timeout_s, close_timeout=2.0, open_timeout=10.0, server_header=None,
            logger=WEBSOCKETS_LOG,
        )
        self.port = int(server.sockets[0].getsockname()[1])
        host = cfg.host if ":" not in cfg.host else f"[{cfg.host}]"
        self.url = f"{'https' if cfg.tls else 'http'}://{host}:{self.port}/?token={quote(self.token, safe='')}"
        self._bridge.attach(asyncio.get_running_loop())
        self._life.advance(Phase.LIVE)
        ticker = asyncio.create_task(self._hub.run_heatmaps())
        try:
            await self._stop.wait()
            await self._shutdown(server)
        finally:
            ticker.cancel()

    def _end_session(self) -> None:
        """Every event handed over so far goes out, then ``end``; exactly once (LIVE or ENDING -> ENDED)."""
        if not self._life.advance(Phase.ENDED):
            return
        self._channel.end()
        if self.config.linger_s > 0:
            asyncio.get_running_loop().call_later(self.config.linger_s, self._begin_shutdown)

    def _begin_shutdown(self) -> None:
        """End the session if nobody has (end_linger without close), then let ``_main`` shut down; once."""
        self._end_session()
        if self._life.advance(Phase.SHUTTING_DOWN) and self._stop is not None:
            self._stop.set()

    async def _shutdown(self, server: Server) -> None:
        """Deliver what is queued (bounded by flush_timeout_s), close every connection with 1001, stop listening."""
        self._bridge.drain()  # events that arrived after the end
        await self._hub.close_all()
        # Anything left (a handshake in progress) is closed by the library; ours are all closed already.
        server.close()
        try:
            await asyncio.wait_for(server.wait_closed(), timeout=3.0)
        except asyncio.TimeoutError:
            log.warning("dashboard: some connections did not close in time")

    # ---- websocket connections ---------------------------------------------------------------
    async def _handler(self, ws: ServerConnection) -> None:
        await self._channel.serve_client(ws, ended=self._life.ended)

    # ---- HTTP: the router decides, this answers ---------------------------------------------
    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        decision = self._router.route(
            HttpRequest(getattr(request, "method", "GET"), request.path, tuple(request.headers.raw_items())),
            accepting=self._life.accepting, clients=len(self._hub.clients))
        if isinstance(decision, AcceptWebsocket):
            sock = connection.transport.get_extra_info("socket")
            if sock is not None and self.config.socket_send_buffer:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, int(self.config.socket_send_buffer))
            return None
        if isinstance(decision, ServePage):
            return http_response(HTTPStatus.OK, decision.body, decision.content_type, decision.headers)
        if isinstance(decision, QueryHistory):
            return await self._history(decision)
        if isinstance(decision, QueryPatients):
            return await self._patients()
        assert isinstance(decision, Refuse)  # QuerySessions is the clinic's: this router has no rooms
        return self._refuse(connection, decision)

    def _refuse(self, connection: ServerConnection, refusal: Refuse) -> Response:
        if refusal.audit:
            self.stats["refused"] += 1
            peer = getattr(connection, "remote_address", None)
            log.warning("dashboard refused a request from %s: %s", peer[0] if peer else "?", refusal.reason)
        body, content_type = refusal.render()
        return http_response(refusal.status, body, content_type, refusal.headers)

    async def _history(self, query: QueryHistory) -> Response:
        from monitor.history.aggregate import history_json

        store = self.store
        if store is None:  # the router does not route here without a store
            return json_response(HTTPStatus.NOT_FOUND, {"error": "history is not available"})
        try:
            data = await self._calls.run(history_json, store, query.patient, query.days)
        except LookupError:
            return json_response(HTTPStatus.NOT_FOUND, {"error": f"no history for patient {query.patient!r}"})
        except Exception:  # noqa: BLE001
            log.exception("dashboard: building the history of a patient failed")
            return json_response(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "could not build the history"})
        return json_response(HTTPStatus.OK, data)

    async def _patients(self) -> Response:
        """``{"patients": [{"patient_id", "sessions", "last_session"}]}``, sorted by id (the History picker)."""
        store = self.store
        if store is None:  # the router does not route here without a store
            return json_response(HTTPStatus.NOT_FOUND, {"error": "history is not available"})
        try:
            rows = await self._calls.run(store.patients)
        except Exception:  # noqa: BLE001
            log.exception("dashboard: listing the patients failed")
            return json_response(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "could not list the patients"})
        return json_response(HTTPStatus.OK, {"patients": [
            {"patient_id": r.patient_id, "sessions": r.sessions, "last_session": r.last_session}
            for r in rows if r.patient_id is not None]})

    def _ssl_context(self) -> ssl.SSLContext | None:
        return ssl_context(self.config)


def ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    """TLS 1.2+ from the configured certificate and key; None without them (loopback only)."""
    if not config.certfile or not config.keyfile:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.certfile, config.keyfile)
    return context


def http_response(status: HTTPStatus, body: bytes, content_type: str,
              extra: tuple[tuple[str, str], ...] = ()) -> Response:
    headers = Headers([
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Connection", "close"),
        ("Content-Length", str(len(body))),
        ("Content-Type", content_type),
        ("Cache-Control", "no-store"),  # clinical data: nothing kept in browser caches
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),  # the token is in the URL
        ("X-Frame-Options", "DENY"),
        *extra,
    ])
    return Response(status.value, status.phrase, headers, body)


def json_response(status: HTTPStatus, data: dict[str, Any]) -> Response:
    return http_response(status, dumps(data).encode(), "application/json")
