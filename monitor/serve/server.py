"""The dashboard server: live points and heat maps pushed over websockets, and the page itself.

One port serves both: plain HTTP GETs get the bundled page (monitor/serve/static) or
the history API, a websocket upgrade on ``/ws`` gets the live session. It runs
on the ``websockets`` library in its own thread and event loop, so nothing it
does (a slow browser, a stalled tablet, TLS) can slow the pipeline:

    pipeline dispatch thread ── point/mark/status ──▶ bounded inbox ──▶ loop thread
                                                                         │ per-client bounded send queue
                                                                         ▼
                                                       client 1 … client N (each its own sender task)

Points and marks are never dropped for a client that keeps up; heat map and
status frames are "latest wins" so a slow client skips intermediate ones; a
client whose queue still grows past its bound is disconnected with a reason
(it reconnects and resyncs from the ``snapshot``). The wire format lives in
monitor/protocol.py and docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import atexit
import email.utils
import hmac
import html
import ipaddress
import logging
import re
import secrets
import socket
import ssl
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from calibration.quadrants import NEUTRAL_RADIUS, QUADRANT_NAMES
from monitor.serve import protocol
from monitor.serve.protocol import ProtocolError, SessionSummary, dumps, message

log = logging.getLogger(__name__)
#: The library's own per-connection chatter ("connection open", "HTTP response sent") is noise at INFO.
_ws_log = logging.getLogger(__name__ + ".websockets")

STATIC_DIR = Path(__file__).with_name("static")
WS_PATH = "/ws"
HISTORY_PATH = "/api/history"
_STATIC_ROUTES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
_HOST_HEADER = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


@dataclass
class ServerConfig:
    """Where and how the dashboard is served.

    token: required by the page, the websocket and the API; a random one is made (and printed) if None.
    linger_s: keep serving this long after the session ends, so the last state stays on screen.
    client_queue_messages / client_queue_bytes: how far a client may fall behind before it is disconnected.
    socket_send_buffer: kernel send buffer per websocket (bytes); bounded so that a stalled client shows up
        in its queue (and gets disconnected) instead of hiding megabytes in the kernel. None = OS default.
    max_message_bytes: largest client message; a bigger one closes that client's connection (code 1009).
    """

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    allowed_origins: tuple[str, ...] = ()
    linger_s: float = 0.0
    heatmap_hz: float = 2.0
    max_clients: int = 100
    client_queue_messages: int = 2000
    client_queue_bytes: int = 16 * 2**20
    max_message_bytes: int = 16 * 1024
    client_messages_per_s: float = 20.0
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0
    snapshot_points: int = 5000
    max_marks: int = 2000
    inbox_size: int = 10_000
    flush_timeout_s: float = 3.0
    socket_send_buffer: int | None = 256 * 1024

    def __post_init__(self) -> None:
        if not 0 <= int(self.port) <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if bool(self.certfile) != bool(self.keyfile):
            raise ValueError("TLS needs both --certfile and --keyfile")
        if self.heatmap_hz <= 0:
            raise ValueError("heatmap_hz must be positive")
        if self.linger_s < 0:
            raise ValueError("linger must be >= 0 seconds")
        if self.token is not None and not self.token.strip():
            raise ValueError("the token must not be empty")

    @property
    def tls(self) -> bool:
        return bool(self.certfile)


def is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Bucket:
    """Token bucket: a client may send ``rate`` messages a second, in bursts of twice that."""

    def __init__(self, rate: float):
        self.rate, self.burst = rate, max(2.0 * rate, 1.0)
        self.tokens, self.last = self.burst, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _Client:
    """One websocket client's outgoing side: an ordered queue plus "latest wins" slots.

    Only the loop thread touches it. Ordered messages (hello, snapshot, point,
    mark, replies, end) are never dropped; ``heatmap``/``status`` frames
    overwrite an unsent predecessor, which is the intended drop.
    """

    def __init__(self, cid: int, ws: ServerConnection, config: ServerConfig):
        self.id = cid
        self.ws = ws
        self.queue: deque[str] = deque()
        self.queued_chars = 0
        self.slots: dict[str, str] = {}
        self.wakeup = asyncio.Event()
        self.max_messages = config.client_queue_messages
        self.max_chars = config.client_queue_bytes
        self.bucket = _Bucket(config.client_messages_per_s)
        self.dropped_heatmaps = 0
        self.closing = False
        self.kicked = False
        self.sender: asyncio.Task | None = None

    def push(self, msg: str) -> bool:
        """Queue an ordered message; False when the client is now too far behind."""
        self.queue.append(msg)
        self.queued_chars += len(msg)
        self.wakeup.set()
        return len(self.queue) <= self.max_messages and self.queued_chars <= self.max_chars

    def put_latest(self, kind: str, msg: str) -> None:
        if kind in self.slots and kind == "heatmap":
            self.dropped_heatmaps += 1
        self.slots[kind] = msg
        self.wakeup.set()

    def next(self) -> str | None:
        if self.queue:
            msg = self.queue.popleft()
            self.queued_chars -= len(msg)
            return msg
        if self.slots:
            kind = next(iter(self.slots))
            return self.slots.pop(kind)
        return None


class DashboardServer:
    """A ``PointSink`` that serves the live dashboard; see the module docstring.

    ``controls`` (set after construction; the pipeline) receives pause/resume
    and marks from the page. ``store`` (or None) backs the history endpoint.
    """

    def __init__(self, config: ServerConfig | None = None, store=None, controls=None):
        self.config = config or ServerConfig()
        self.store = store
        self.controls = controls
        self.token = self.config.token or secrets.token_urlsafe(18)
        self.url: str | None = None
        self.port: int | None = None
        self.session = None
        self.heatmap = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._ending = False  # close() was called
        self._closed = False  # the loop thread has stopped
        self._shutdown_task: asyncio.Future | None = None
        self._static = {name: (STATIC_DIR / name).read_bytes() for name, _ in set(_STATIC_ROUTES.values())}
        # The only state shared with the pipeline's thread: a bounded inbox.
        self._inbox: deque[tuple[str, Any]] = deque()
        self._inbox_lock = threading.Lock()
        self._wake_pending = False
        self.inbox_dropped = 0
        # Loop-thread state.
        self._server = None
        self._stop: asyncio.Event | None = None
        self._tasks: set[asyncio.Task] = set()
        self._clients: dict[int, _Client] = {}
        self._next_id = 1
        # Points kept for snapshots, as their JSON text: a reconnect joins strings instead of re-encoding.
        self._points: deque[str] = deque(maxlen=self.config.snapshot_points)
        self._marks: deque[dict] = deque(maxlen=self.config.max_marks)
        self._summary = SessionSummary()
        self._status: dict | None = None
        self._heat_seq = 0
        self._heat_dirty = True
        self._heat_t: float | None = None
        self._ended = False
        self._shutting_down = False
        self.stats = {"connections": 0, "refused": 0, "slow_disconnects": 0, "errors_sent": 0, "points": 0}

    # ---- PointSink (called from the pipeline's dispatch thread) -----------------------------
    def start(self, session, heatmap) -> None:
        """Bind, start the loop thread and print the page's address; raises if the port cannot be used."""
        self.session, self.heatmap = session, heatmap
        ssl_context = self._ssl_context()
        if _ws_log.level == logging.NOTSET:
            _ws_log.setLevel(logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.WARNING)
        self._thread = threading.Thread(target=self._run_loop, args=(ssl_context,), name="dashboard", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("dashboard server did not start within 30 s")
        if self._start_error is not None:
            raise RuntimeError(f"dashboard: cannot serve on {self.config.host}:{self.config.port}: "
                               f"{self._start_error} (choose another --port, or --port 0 for any free one)"
                               ) from self._start_error
        if not is_loopback(self.config.host):
            log.warning("dashboard listens on %s: anyone who can reach port %d and has the link can watch this "
                        "session%s", self.config.host, self.port,
                        "" if self.config.tls else "; the traffic is not encrypted (use --certfile/--keyfile)")
        print(f"dashboard: {self.url}", file=sys.stderr, flush=True)
        if self.config.host in ("0.0.0.0", "::", ""):
            log.info("from another computer, open it with this computer's address instead of %s (this computer "
                     "is %r)", self.config.host or "the empty host", socket.gethostname())

    def point(self, point) -> None:
        self._post("point", point)

    def mark(self, mark) -> None:
        self._post("mark", mark)

    def status(self, status) -> None:
        self._post("status", status)

    def close(self) -> None:
        """End the session for the dashboard: every queued point goes out, then an ``end`` message.

        Without a linger, connections are then closed with 1001 "session ended" before this returns.
        With ``linger_s`` this returns at once and the page stays served (the last state on screen,
        reconnects still get the snapshot) until the linger is over; an exit handler keeps the
        process alive for it, and Ctrl-C cuts it short.
        """
        if self._thread is None or self._ending:
            return
        self._ending = True
        self._post("end", None)
        loop = self._loop
        if self.config.linger_s > 0 and loop is not None and self._thread.is_alive():
            log.info("session ended; the dashboard stays up for %.0f s (Ctrl-C to quit sooner)", self.config.linger_s)
            loop.call_soon_threadsafe(loop.call_later, self.config.linger_s, self._begin_shutdown)
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
        loop, thread = self._loop, self._thread
        if thread is None:
            return
        if loop is not None and thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            try:
                future.result(timeout=self.config.flush_timeout_s + 15)
            except Exception as exc:  # noqa: BLE001 - closing must not raise into the pipeline
                log.warning("dashboard did not shut down cleanly: %s", exc)
        thread.join(timeout=5)
        self._closed = True

    @property
    def client_count(self) -> int:
        return len(self._clients)

    # ---- thread hand-off ---------------------------------------------------------------------
    def _post(self, kind: str, value: Any) -> None:
        """Hand an event to the loop without ever blocking: a bounded inbox and at most one pending wake-up."""
        loop = self._loop
        if loop is None or self._closed:
            return
        with self._inbox_lock:
            if len(self._inbox) >= self.config.inbox_size:
                self.inbox_dropped += 1
                if self.inbox_dropped in (1, 10, 100) or self.inbox_dropped % 1000 == 0:
                    log.warning("dashboard is not keeping up: %d events dropped", self.inbox_dropped)
                return
            self._inbox.append((kind, value))
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            loop.call_soon_threadsafe(self._drain_inbox)
        except RuntimeError:  # the loop has already stopped
            pass

    def _drain_inbox(self) -> None:
        with self._inbox_lock:
            items = list(self._inbox)
            self._inbox.clear()
            self._wake_pending = False
        for kind, value in items:
            try:
                if kind == "point":
                    self._on_point(value)
                elif kind == "mark":
                    body = protocol.mark_body(value)
                    self._marks.append(body)
                    self._broadcast(dumps(message("mark", **body)))
                elif kind == "status":
                    self._status = protocol.status_body(value)
                    self._broadcast_status()
                elif kind == "end":
                    self._on_end()
            except Exception:  # noqa: BLE001 - one bad event must not stop the stream
                log.exception("dashboard could not forward a %s", kind)

    # ---- loop thread ---------------------------------------------------------------------------
    def _run_loop(self, ssl_context) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._main(ssl_context))
        except BaseException as exc:  # noqa: BLE001 - reported to start() or logged
            if not self._ready.is_set():
                self._start_error = exc
            else:
                log.exception("dashboard server stopped")
        finally:
            self._ready.set()
            try:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                if pending:  # let callers waiting on the shutdown see it finish, then cancel stragglers
                    loop.run_until_complete(asyncio.wait(pending, timeout=1.0))
                    for task in pending:
                        task.cancel()
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _main(self, ssl_context) -> None:
        cfg = self.config
        self._stop = asyncio.Event()
        self._server = await serve(
            self._handler, cfg.host, cfg.port, process_request=self._process_request, ssl=ssl_context,
            compression=None,  # small messages, many clients: CPU matters more than bytes on a LAN
            max_size=cfg.max_message_bytes, max_queue=16, ping_interval=cfg.ping_interval_s,
            ping_timeout=cfg.ping_timeout_s, close_timeout=2.0, open_timeout=10.0, server_header=None,
            logger=_ws_log,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        host = cfg.host if ":" not in cfg.host else f"[{cfg.host}]"
        self.url = f"{'https' if cfg.tls else 'http'}://{host}:{self.port}/?token={quote(self.token, safe='')}"
        self._ready.set()
        ticker = asyncio.create_task(self._heatmap_ticker())
        try:
            await self._stop.wait()
        finally:
            ticker.cancel()

    def _begin_shutdown(self) -> asyncio.Future:
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.ensure_future(self._do_shutdown())
        return self._shutdown_task

    async def _shutdown(self) -> None:
        await self._begin_shutdown()

    async def _do_shutdown(self) -> None:
        """Deliver what is queued (bounded by flush_timeout_s), then close every connection with 1001."""
        self._shutting_down = True
        self._drain_inbox()
        if not self._ended:
            self._on_end()
        clients = list(self._clients.values())
        senders = [c.sender for c in clients if c.sender is not None and not c.sender.done()]
        for client in clients:
            client.closing = True
            client.wakeup.set()
        if senders:
            await asyncio.wait(senders, timeout=self.config.flush_timeout_s)
        await asyncio.gather(*(_close_ws(c.ws, protocol.CLOSE_SESSION_ENDED, "session ended") for c in clients))
        if self._tasks:  # clients being disconnected for falling behind
            await asyncio.wait(list(self._tasks), timeout=3.0)
        if self._server is not None:
            # Anything left (a handshake in progress) is closed by the library; ours are all closed already.
            self._server.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), timeout=3.0)
            except asyncio.TimeoutError:
                log.warning("dashboard: some connections did not close in time")
        if self._stop is not None:
            self._stop.set()

    def _session_time(self) -> float | None:
        controls = self.controls
        try:
            return float(controls.session_time) if controls is not None else None
        except Exception:  # noqa: BLE001
            return None

    def _on_point(self, point) -> None:
        body = protocol.point_body(point)
        text = dumps(body)
        self._points.append(text)
        self._summary.add(body["valence"], body["arousal"], body["t_end"] - body["t_start"], body["confidence"])
        self._heat_dirty = True
        self.stats["points"] += 1
        self._broadcast('{"type":"point",' + text[1:])

    def _on_end(self) -> None:
        self._ended = True
        self._emit_heatmap(force=True)
        self._broadcast(dumps(message("end", t=self._session_time(), summary=self._summary.to_dict(),
                                      linger_s=self.config.linger_s)))

    def _heatmap_frame(self) -> dict | None:
        if self.heatmap is None:
            return None
        t = self._session_time()
        snap = self.heatmap.snapshot(t)
        self._heat_seq += 1
        self._heat_t = snap.t
        return protocol.heatmap_body(snap, self._heat_seq)

    def _emit_heatmap(self, force: bool = False) -> None:
        """A frame when points arrived, and at most every second otherwise (decay/window fading)."""
        t = self._session_time()
        stale = t is not None and self._heat_t is not None and t - self._heat_t >= 1.0
        if not (force or self._heat_dirty or stale) or not self._clients:
            return
        frame = self._heatmap_frame()
        self._heat_dirty = False
        if frame is None:
            return
        msg = dumps(message("heatmap", **frame))
        for client in list(self._clients.values()):
            client.put_latest("heatmap", msg)

    async def _heatmap_ticker(self) -> None:
        period = 1.0 / self.config.heatmap_hz
        while True:
            await asyncio.sleep(period)
            try:
                self._emit_heatmap()
            except Exception:  # noqa: BLE001
                log.exception("dashboard heat map frame failed")

    def _status_message(self, client: _Client) -> str | None:
        if self._status is None:
            return None
        body = dict(self._status)
        if self.controls is not None:
            body["paused"] = bool(getattr(self.controls, "paused", body["paused"]))
        body["server"] = {"clients": len(self._clients), "queued": len(client.queue),
                          "dropped_heatmap_frames": client.dropped_heatmaps, "inbox_dropped": self.inbox_dropped}
        return dumps(message("status", **body))

    def _broadcast_status(self) -> None:
        for client in list(self._clients.values()):
            msg = self._status_message(client)
            if msg is not None:
                client.put_latest("status", msg)

    def _broadcast(self, msg: str) -> None:
        for client in list(self._clients.values()):
            if not client.push(msg):
                self._kick(client)

    def _send(self, client: _Client, body: dict) -> None:
        if client.kicked:
            return
        if body.get("type") == "error":
            self.stats["errors_sent"] += 1
        if not client.push(dumps(body)):
            self._kick(client)

    def _kick(self, client: _Client) -> None:
        """Disconnect a client that fell too far behind; it reconnects and resyncs from a snapshot."""
        if client.kicked:
            return
        client.kicked = True
        backlog = len(client.queue)
        self._clients.pop(client.id, None)
        client.queue.clear()
        client.slots.clear()
        self.stats["slow_disconnects"] += 1
        log.warning("dashboard client %d fell %d messages behind; disconnecting it", client.id, backlog)
        if client.sender is not None:
            client.sender.cancel()
        self._spawn(_close_ws(client.ws, protocol.CLOSE_TOO_SLOW, f"too far behind ({backlog} messages queued)"))

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _snapshot_message(self) -> str:
        controls = self.controls
        head = dumps(message(
            "snapshot", t=self._session_time(), paused=bool(getattr(controls, "paused", False)), ended=self._ended,
            heatmap=self._heatmap_frame(), points_total=self._summary.points, marks=list(self._marks),
            summary=self._summary.to_dict(), status=self._status,
        ))
        return head[:-1] + ',"points":[' + ",".join(self._points) + "]}"

    def _hello_message(self, client: _Client) -> str:
        s = self.session
        hm = getattr(self.heatmap, "config", None)
        return dumps(message(
            "hello", protocol=protocol.PROTOCOL_VERSION, server="mood-monitor", client_id=client.id,
            session={"id": s.session_id, "started_at": s.started_at, "source": s.source, "patient_id": s.patient_id,
                     "labels": list(s.labels)} if s is not None else None,
            model={"id": s.model_id, "version": s.model_version} if s is not None else None,
            device=s.device if s is not None else None,
            heatmap={"bins": hm.bins, "mode": hm.mode, "half_life_s": hm.half_life_s, "window_s": hm.window_s}
            if hm is not None else None,
            limits={"max_message_bytes": self.config.max_message_bytes, "heatmap_hz": self.config.heatmap_hz,
                    "client_queue_messages": self.config.client_queue_messages,
                    "max_mark_chars": protocol.MAX_MARK_CHARS},
            controls=self.controls is not None, history=self.store is not None,
            circumplex={"neutral_radius": NEUTRAL_RADIUS, "quadrants": QUADRANT_NAMES},
        ))

    # ---- websocket connections -----------------------------------------------------------------
    async def _handler(self, ws: ServerConnection) -> None:
        cid = self._next_id
        self._next_id += 1
        client = _Client(cid, ws, self.config)
        self._clients[cid] = client
        self.stats["connections"] += 1
        log.info("dashboard client %d connected (%d connected)", cid, len(self._clients))
        client.push(self._hello_message(client))
        client.push(self._snapshot_message())
        status = self._status_message(client)
        if status is not None:
            client.put_latest("status", status)
        client.sender = asyncio.create_task(self._sender(client))
        try:
            async for raw in ws:
                if client.kicked:
                    break
                await self._on_client_message(client, raw)
        except ConnectionClosed:
            pass
        finally:
            self._clients.pop(cid, None)
            if client.sender is not None and not client.closing:
                client.sender.cancel()
            log.info("dashboard client %d left (%d connected)", cid, len(self._clients))

    async def _sender(self, client: _Client) -> None:
        """The only writer of one connection: a stalled socket blocks this task and nothing else."""
        try:
            while True:
                msg = client.next()
                if msg is None:
                    if client.closing:
                        return
                    client.wakeup.clear()
                    await client.wakeup.wait()
                    continue
                await client.ws.send(msg)
        except ConnectionClosed:
            pass

    async def _on_client_message(self, client: _Client, raw) -> None:
        ref = None
        try:
            if not client.bucket.take():
                raise ProtocolError("rate_limited", "too many messages; slow down")
            msg = protocol.parse_client_message(raw)
            ref = msg["id"]
            await self._act(client, msg)
        except ProtocolError as exc:
            self._send(client, protocol.error(exc.code, str(exc), exc.ref if exc.ref is not None else ref))
        except Exception as exc:  # noqa: BLE001 - a bug here must not take the connection down
            log.exception("dashboard: handling a client message failed")
            self._send(client, protocol.error("internal", f"could not handle the message: {type(exc).__name__}", ref))

    async def _act(self, client: _Client, msg: dict) -> None:
        kind, ref = msg["type"], msg["id"]
        if kind == "ping":
            self._send(client, message("pong", id=ref, t=msg["t"], server_time=time.time(),
                                       session_time=self._session_time()))
            return
        if self._ended:
            raise ProtocolError("session_ended", "the session has ended", ref)
        controls = self.controls
        if controls is None:
            raise ProtocolError("unavailable", "this server has no pipeline to control", ref)
        if kind in ("pause", "resume"):
            controls.pause() if kind == "pause" else controls.resume()
            paused = bool(controls.paused)
            log.info("dashboard client %d: %s", client.id, kind)
            self._send(client, message("ack", id=ref, of=kind, paused=paused))
            if self._status is None:
                self._status = {"t": self._session_time(), "speech_active": False, "paused": paused, "queues": {},
                                "dropped_frames": 0, "failed_segments": 0, "segments": 0, "points": 0,
                                "device": getattr(self.session, "device", None)}
            self._status["paused"] = paused
            self._broadcast_status()
        elif kind == "mark":
            # The pipeline fans the mark out to every sink (store, JSONL, and back here for the broadcast);
            # a thread keeps a slow sink off this loop.
            try:
                mark = await asyncio.to_thread(controls.add_mark, msg["text"], t=msg["t"], source="dashboard")
            except RuntimeError as exc:  # the pipeline is closing its outputs: the mark could not be kept
                raise ProtocolError("session_ended", str(exc), ref) from exc
            log.info("dashboard client %d: mark at %.1f s", client.id, mark.t)
            self._drain_inbox()  # the pipeline has fanned the mark out to us: broadcast it before the ack
            self._send(client, message("ack", id=ref, of="mark", mark=protocol.mark_body(mark)))

    # ---- HTTP: page, history API, and the checks in front of the websocket ---------------------
    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if getattr(request, "method", "GET") != "GET":  # websockets >= 16 also parses other methods
            return _response(HTTPStatus.METHOD_NOT_ALLOWED, b"only GET is supported\n", "text/plain; charset=utf-8",
                             [("Allow", "GET")])
        url = urlsplit(request.path)
        query = parse_qs(url.query, keep_blank_values=True)
        host = _header(request, "Host") or ""
        if not self._host_ok(host):
            return self._refuse(connection, HTTPStatus.MISDIRECTED_REQUEST, "unexpected Host header")
        upgrade = "websocket" in (_header(request, "Upgrade") or "").lower()
        if url.path == WS_PATH:
            if not upgrade:
                return _text(HTTPStatus.UPGRADE_REQUIRED, "this address is the dashboard's websocket\n")
            if not self._token_ok(request, query):
                return self._refuse(connection, HTTPStatus.FORBIDDEN, "wrong or missing token")
            origin = _header(request, "Origin")
            if origin is not None and not self._origin_ok(origin, host):
                return self._refuse(connection, HTTPStatus.FORBIDDEN, f"origin {origin[:80]!r} not allowed")
            if self._shutting_down:
                return _text(HTTPStatus.SERVICE_UNAVAILABLE, "the session has ended\n")
            if len(self._clients) >= self.config.max_clients:
                return _text(HTTPStatus.SERVICE_UNAVAILABLE, "too many dashboard clients\n")
            sock = connection.transport.get_extra_info("socket")
            if sock is not None and self.config.socket_send_buffer:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, int(self.config.socket_send_buffer))
            return None
        if upgrade:
            return _text(HTTPStatus.NOT_FOUND, f"websocket endpoint is {WS_PATH}\n")
        if url.path in _STATIC_ROUTES:
            if not self._token_ok(request, query):
                return self._refuse(connection, HTTPStatus.FORBIDDEN,
                                    "open the dashboard with the link the monitor printed (it carries ?token=...)")
            name, content_type = _STATIC_ROUTES[url.path]
            body = self._static[name]
            extra = []
            if name == "index.html":
                body = body.replace(b"__TOKEN__", html.escape(quote(self.token, safe=""), quote=True).encode())
                extra.append(("Content-Security-Policy", _csp(host)))
            return _response(HTTPStatus.OK, body, content_type, extra)
        if url.path == HISTORY_PATH:
            if not self._token_ok(request, query):
                return self._refuse(connection, HTTPStatus.FORBIDDEN, "wrong or missing token", json=True)
            return await self._history(query)
        return _text(HTTPStatus.NOT_FOUND, "not found\n")

    def _refuse(self, connection: ServerConnection, status: HTTPStatus, reason: str, json: bool = False) -> Response:
        self.stats["refused"] += 1
        peer = getattr(connection, "remote_address", None)
        log.warning("dashboard refused a request from %s: %s", peer[0] if peer else "?", reason)
        if json:
            return _json(status, {"error": reason})
        return _text(status, f"{status.value} {status.phrase}: {reason}\n")

    def _token_ok(self, request: Request, query: dict[str, list[str]]) -> bool:
        given = query.get("token", [None])[0]
        auth = _header(request, "Authorization") or ""
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def _host_ok(self, host: str) -> bool:
        """Refuse odd Host headers, and on a loopback bind any name but the loopback ones (DNS rebinding)."""
        if not host or not _HOST_HEADER.match(host):
            return False
        if not is_loopback(self.config.host):
            return True
        name = host[1:host.index("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
        return is_loopback(name.lower()) or name.lower() == self.config.host.lower()

    def _origin_ok(self, origin: str, host: str) -> bool:
        """Same-origin only (plus configured extras): another site's page must not open our websocket."""
        scheme = "https" if self.config.tls else "http"
        if origin.lower() == f"{scheme}://{host}".lower():
            return True
        return origin in self.config.allowed_origins

    async def _history(self, query: dict[str, list[str]]) -> Response:
        if self.store is None:
            return _json(HTTPStatus.NOT_FOUND, {"error": "history is not available: this monitor keeps no store "
                                                          "(started with --no-store)"})
        patient = (query.get("patient", [""])[0] or "").strip()
        if not patient or len(patient) > 128 or not patient.isprintable():
            return _json(HTTPStatus.BAD_REQUEST, {"error": "give ?patient=ID (1-128 printable characters)"})
        try:
            days = int(query.get("days", ["14"])[0])
            if not 1 <= days <= 366:
                raise ValueError
        except ValueError:
            return _json(HTTPStatus.BAD_REQUEST, {"error": "days must be a whole number from 1 to 366"})
        from monitor.history.aggregate import history_json
        try:
            data = await asyncio.to_thread(history_json, self.store, patient, days)
        except LookupError:
            return _json(HTTPStatus.NOT_FOUND, {"error": f"no history for patient {patient!r}"})
        except Exception:  # noqa: BLE001
            log.exception("dashboard: building the history of a patient failed")
            return _json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "could not build the history"})
        return _json(HTTPStatus.OK, data)

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.config.tls:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.config.certfile, self.config.keyfile)
        return context


async def _close_ws(ws: ServerConnection, code: int, reason: str, timeout: float = 2.0) -> None:
    """Close with a reason, but never wait on a peer that stopped reading: abort after ``timeout``.

    The library's close() first drains the send buffer, which a stalled client never empties.
    """
    try:
        await asyncio.wait_for(ws.close(code, reason), timeout)
    except Exception:  # noqa: BLE001 - timeout or a connection already gone: abort below
        pass
    finally:
        ws.transport.abort()


def _header(request: Request, name: str) -> str | None:
    """One header's value; a repeated header counts as its first value (never an exception)."""
    values = request.headers.get_all(name)
    return values[0] if values else None


def _csp(host: str) -> str:
    return ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"connect-src 'self' ws://{host} wss://{host}; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")


def _response(status: HTTPStatus, body: bytes, content_type: str, extra=()) -> Response:
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


def _text(status: HTTPStatus, text: str) -> Response:
    return _response(status, text.encode(), "text/plain; charset=utf-8")


def _json(status: HTTPStatus, data: Any) -> Response:
    return _response(status, dumps(data).encode(), "application/json")
