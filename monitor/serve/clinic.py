"""The clinic's server: many rooms stream audio in, each gets its own session, dashboard channel and store rows.

    room (browser or thin client) ──/room: audio──▶ PushedAudioSource ─▶ session pipeline ─┬─▶ store (patient's rows)
        ◀──────── the session's dashboard stream ◀── SessionChannel ◀──────────────────────┘
    dashboards ──/ws?session=ID──▶ the same SessionChannel

One port and one event loop serve every room and dashboard; each session's
pipeline runs on its own threads, and their models share one feature service
(``monitor.live.shared_model``) that batches segments across sessions. The
sessions themselves are built by a ``SessionFactory`` passed in (the CLI
wires model, store and speaker attribution), so this module only hosts them.
A room that drops its connection keeps its session for ``resume_grace_s``;
it comes back with ``room_hello`` naming the session and re-sends from
``next_seq`` (monitor/serve/rooms.py), so no audio is lost or duplicated.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Callable, Protocol
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from monitor.audio.pushed import PushedAudioSource
from monitor.serve import protocol, rooms
from monitor.serve.access import ClinicAccess, Clinician
from monitor.serve.blocking import BlockingCalls
from monitor.serve.channel import SessionChannel
from monitor.serve.config import ServerConfig, is_loopback
from monitor.serve.hub import Client, close_ws
from monitor.serve.protocol import ProtocolError, message
from monitor.serve.router import (AcceptWebsocket, HttpRequest, QueryHistory, QueryPatients, QuerySessions, Router,
                                  ServePage, load_pages)
from monitor.serve.server import WEBSOCKETS_LOG, http_response, json_response, ssl_context

if TYPE_CHECKING:  # pragma: no cover
    from monitor.history.store import Store
    from monitor.live.events import Mark, Point, SessionInfo, Status
    from monitor.live.heatmap import RollingHeatmap
    from monitor.live.pipeline import MonitorPipeline, SessionSummary

log = logging.getLogger(__name__)

#: Close code for a room connection replaced by a newer one for the same session (the room reconnected).
CLOSE_REPLACED = 4001


class SessionFactory(Protocol):
    """Builds one room's session pipeline around its audio source (model, store sink, attribution)."""

    def __call__(self, hello: rooms.RoomHello, clinician: Clinician, source: PushedAudioSource) -> MonitorPipeline:
        ...


@dataclass
class ClinicConfig:
    """The clinic server's limits, besides the dashboard's own (``ServerConfig``).

    max_sessions: concurrent sessions over all rooms. resume_grace_s: how long a session whose room dropped
    its connection waits for it to come back before it is ended. queue_seconds: audio a session holds
    waiting for its segmenter (beyond it the room is slowed down). max_session_hours: a session is ended
    after this long. hello_timeout_s: how long a new room connection may take to say ``room_hello``.
    max_connections: websockets (rooms and dashboards) over all sessions.
    """

    max_sessions: int = 32
    resume_grace_s: float = 120.0
    queue_seconds: float = 10.0
    max_session_hours: float = 4.0
    hello_timeout_s: float = 10.0
    max_connections: int = 512

    def __post_init__(self) -> None:
        if self.max_sessions < 1 or self.resume_grace_s < 0 or self.queue_seconds <= 0:
            raise ValueError("max sessions must be >= 1, resume grace >= 0, queue seconds > 0")


class _ChannelSink:
    """A channel as the pipeline's output: the session's events go to its dashboards and its room."""

    output_name = "dashboard"

    def __init__(self, channel: SessionChannel, on_close: Callable[[], object]) -> None:
        self.channel = channel
        self._on_close = on_close

    def start(self, session: SessionInfo, heatmap: RollingHeatmap) -> None:
        self.channel.bind(session, heatmap)

    def point(self, point: Point) -> None:
        self.channel.point(point)

    def mark(self, mark: Mark) -> None:
        self.channel.mark(mark)

    def edit_mark(self, old: Mark, new: Mark | None) -> None:
        self.channel.edit_mark(old, new)

    def status(self, status: Status) -> None:
        self.channel.status(status)

    def close(self) -> None:
        self._on_close()


@dataclass
class RoomSession:
    """One running session: its room's stream position and connection, its pipeline and channel."""

    hello: rooms.RoomHello
    clinician: Clinician
    source: PushedAudioSource
    channel: SessionChannel
    pipeline: MonitorPipeline
    thread: threading.Thread | None = None
    next_seq: int = 0
    room: Client | None = None
    disconnected_at: float | None = None
    started_at: float = field(default_factory=time.time)
    summary: SessionSummary | None = None
    failure: str | None = None

    @property
    def patient(self) -> str:
        return self.hello.patient

    @property
    def session_id(self) -> str:
        return self.pipeline.session.session_id

    def describe(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "patient_id": self.patient, "room": self.hello.room,
                "clinician": self.clinician.id, "started_at": self.started_at,
                "audio_seconds": round(self.source.received_seconds, 3), "connected": self.room is not None,
                "ended": self.summary is not None or self.failure is not None}


class ClinicServer:
    """Many rooms' sessions on one port; see the module docstring. ``start()`` runs it on its own thread."""

    def __init__(self, factory: SessionFactory, config: ServerConfig | None = None,
                 clinic: ClinicConfig | None = None, access: ClinicAccess | None = None,
                 store: Store | None = None) -> None:
        self.config = config or ServerConfig()
        self.clinic = clinic or ClinicConfig()
        self.factory = factory
        self.store = store
        if not is_loopback(self.config.host) and not self.config.tls:
            raise ValueError(f"serving clinical audio on {self.config.host} needs TLS: give --certfile and --keyfile "
                             "(or bind 127.0.0.1 behind a TLS proxy)")
        if access is None:
            access, self.token = ClinicAccess.single_token(self.config.token)
        else:
            self.token = ""
        self.access = access
        self._router = Router(self.config, self.token, load_pages(), history=store is not None, access=access)
        self._calls = BlockingCalls(threads=4, name="clinic-call",
                                    on_thread_exit=store.release_thread_connection if store is not None else None)
        self.sessions: dict[str, RoomSession] = {}
        self.finished: dict[str, RoomSession] = {}
        self.stats = {"connections": 0, "refused": 0, "slow_disconnects": 0, "errors_sent": 0, "points": 0,
                      "rooms": 0, "resumes": 0, "duplicate_chunks": 0}
        self.port: int | None = None
        self.url: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    # ---- life ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Bind and serve on a thread of its own; raises if the port cannot be used."""
        context = ssl_context(self.config)
        self._calls.start()
        self._thread = threading.Thread(target=self._run, args=(context,), name="clinic-server", daemon=True)
        self._thread.start()
        self._started.wait(30)
        if self._error is not None:
            raise RuntimeError(f"cannot serve on {self.config.host}:{self.config.port}: {self._error}") from self._error

    def stop(self, timeout: float = 60.0) -> None:
        """End every session (each drains its queued audio and flushes its store rows), then stop serving."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        for room in list(self.sessions.values()):
            room.source.end()
        deadline = time.monotonic() + timeout
        for room in list(self.sessions.values()):
            if room.thread is not None:
                room.thread.join(max(0.1, deadline - time.monotonic()))
        if self._stop is not None:
            loop.call_soon_threadsafe(self._stop.set)
        thread.join(timeout=30)
        self._calls.stop()

    def _run(self, context: ssl.SSLContext | None) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._main(context))
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            if self._started.is_set():
                log.exception("clinic server stopped")
        finally:
            self._started.set()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self, context: ssl.SSLContext | None) -> None:
        cfg = self.config
        self._stop = asyncio.Event()
        server: Server = await serve(
            self._handler, cfg.host, cfg.port, process_request=self._process_request, ssl=context, compression=None,
            max_size=max(cfg.max_message_bytes, rooms.HEADER.size + 2 * rooms.MAX_CHUNK_SAMPLES), max_queue=16,
            ping_interval=cfg.ping_interval_s, ping_timeout=cfg.ping_timeout_s, close_timeout=2.0,
            open_timeout=10.0, server_header=None, logger=WEBSOCKETS_LOG)
        self.port = int(server.sockets[0].getsockname()[1])
        host = cfg.host if ":" not in cfg.host else f"[{cfg.host}]"
        self.url = f"{'https' if cfg.tls else 'http'}://{host}:{self.port}"
        self._started.set()
        reaper = asyncio.create_task(self._reap())
        try:
            await self._stop.wait()
        finally:
            reaper.cancel()
            for room in list(self.sessions.values()) + list(self.finished.values()):
                room.channel.end()
                await room.channel.hub.close_all()
            server.close()
            try:
                await asyncio.wait_for(server.wait_closed(), timeout=3.0)
            except asyncio.TimeoutError:
                log.warning("clinic server: some connections did not close in time")

    async def _reap(self) -> None:
        """End sessions whose room has not come back within the grace, or that ran past the longest session."""
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            for room in list(self.sessions.values()):
                gone = room.disconnected_at is not None and now - room.disconnected_at > self.clinic.resume_grace_s
                too_long = now - room.started_at > self.clinic.max_session_hours * 3600
                if gone or too_long:
                    log.warning("session %s: %s; ending it (what it received is kept)", room.session_id,
                                "its room did not come back" if gone else "it ran past --max-session-hours")
                    room.source.end()

    # ---- HTTP --------------------------------------------------------------------------------
    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        http = HttpRequest(getattr(request, "method", "GET"), request.path, tuple(request.headers.raw_items()))
        decision = self._router.route(http, accepting=self._stop is not None and not self._stop.is_set())
        if isinstance(decision, AcceptWebsocket) and self.stats["connections"] >= self.clinic.max_connections:
            return json_response(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "the server is at its connection limit"})
        if isinstance(decision, AcceptWebsocket):
            return self._check_dashboard_session(http)
        if isinstance(decision, ServePage):
            return http_response(HTTPStatus.OK, decision.body, decision.content_type, decision.headers)
        clinician = self._router.principal(http)
        if isinstance(decision, QuerySessions):
            return json_response(HTTPStatus.OK, {"sessions": [
                r.describe() for r in self.sessions.values() if decision.clinician.may_see(r.patient)]})
        if isinstance(decision, QueryHistory):
            if clinician is None or not clinician.may_see(decision.patient):
                return json_response(HTTPStatus.NOT_FOUND,
                                     {"error": f"no history for patient {decision.patient!r}"})
            return await self._history(decision)
        if isinstance(decision, QueryPatients):
            return await self._patients(clinician)
        if decision.audit:
            self.stats["refused"] += 1
            log.warning("clinic server refused a request: %s", decision.reason)
        body, content_type = decision.render()
        return http_response(decision.status, body, content_type, decision.headers)

    def _check_dashboard_session(self, http: HttpRequest) -> Response | None:
        """A dashboard websocket must name a session its clinician may see (a room says which in its hello)."""
        url = urlsplit(http.target)
        if url.path == rooms.ROOM_PATH:
            return None
        session_id = parse_qs(url.query).get("session", [""])[0]
        room = self.sessions.get(session_id) or self.finished.get(session_id)
        clinician = self._router.principal(http)
        if room is None or clinician is None or not clinician.may_see(room.patient):
            return json_response(HTTPStatus.NOT_FOUND,
                                 {"error": "no such session (give ?session=ID from /api/sessions)"})
        if len(room.channel.hub.clients) >= self.config.max_clients:
            return json_response(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "too many dashboard clients"})
        return None

    async def _history(self, query: QueryHistory) -> Response:
        from monitor.history.aggregate import history_json

        assert self.store is not None  # the router routes here only with a store
        try:
            data = await self._calls.run(history_json, self.store, query.patient, query.days)
        except LookupError:
            return json_response(HTTPStatus.NOT_FOUND, {"error": f"no history for patient {query.patient!r}"})
        return json_response(HTTPStatus.OK, data)

    async def _patients(self, clinician: Clinician | None) -> Response:
        assert self.store is not None
        rows = await self._calls.run(self.store.patients)
        return json_response(HTTPStatus.OK, {"patients": [
            {"patient_id": r.patient_id, "sessions": r.sessions, "last_session": r.last_session}
            for r in rows if r.patient_id is not None and clinician is not None and clinician.may_see(r.patient_id)]})

    # ---- websockets --------------------------------------------------------------------------
    async def _handler(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        http = HttpRequest("GET", request.path, tuple(request.headers.raw_items()))
        clinician = self._router.principal(http)
        assert clinician is not None  # the router let the handshake through
        self.stats["connections"] += 1
        try:
            if urlsplit(request.path).path == rooms.ROOM_PATH:
                await self._serve_room(ws, clinician)
            else:
                session_id = parse_qs(urlsplit(request.path).query).get("session", [""])[0]
                room = self.sessions.get(session_id) or self.finished.get(session_id)
                if room is not None:
                    await room.channel.serve_client(ws, ended=room.channel.ended)
        finally:
            self.stats["connections"] -= 1

    async def _serve_room(self, ws: ServerConnection, clinician: Clinician) -> None:
        opened = await self._greet(ws, clinician)
        if opened is None:
            return
        hello, room = opened
        previous, room.room = room.room, room.channel.hub.join(ws, ended=room.channel.ended)
        if previous is not None:  # the same room reconnected before the old connection timed out
            log.info("session %s: the room reconnected; its old connection is closed", room.session_id)
            await close_ws(previous.ws, CLOSE_REPLACED, "replaced by a newer connection")
        if hello.session is not None:
            log.info("session %s: the room resumed at chunk %d", room.session_id, room.next_seq)
        room.disconnected_at = None
        client = room.room
        room.channel.hub.send(client, message("room_ready", protocol=rooms.ROOM_PROTOCOL_VERSION,
                                              session=room.session_id, next_seq=room.next_seq,
                                              received_seconds=round(room.source.received_seconds, 3),
                                              resumed=hello.session is not None))
        try:
            async for raw_msg in ws:
                if client.kicked:
                    break
                if isinstance(raw_msg, bytes):
                    await self._on_audio(room, client, raw_msg)
                elif rooms.is_room_end(raw_msg):
                    log.info("session %s: the room ended the session", room.session_id)
                    room.source.end()
                else:  # marks, pause and the rest of the dashboard's messages
                    await room.channel.on_client_message(client, raw_msg)
        except ConnectionClosed:
            pass
        finally:
            room.channel.hub.leave(client)
            if room.room is client:
                room.room = None
                if room.session_id in self.sessions:
                    room.disconnected_at = time.time()
                    log.info("session %s: the room's connection dropped; waiting %.0f s for it to resume",
                             room.session_id, self.clinic.resume_grace_s)

    async def _greet(self, ws: ServerConnection, clinician: Clinician) -> tuple[rooms.RoomHello, RoomSession] | None:
        """The room's ``room_hello`` -> its (new or resumed) session; None when it was refused or has ended."""
        try:
            raw = await asyncio.wait_for(ws.recv(), timeout=self.clinic.hello_timeout_s)
            hello = rooms.parse_room_hello(raw)
            ended = self.finished.get(hello.session or "")
            if ended is not None and ended.patient == hello.patient and clinician.may_see(ended.patient):
                # The session ended while the room was away (its room_end crossed a dropped connection):
                # say how it ended, as if the room had been there.
                await ws.send(protocol.dumps(self._ended_message(ended)))
                await close_ws(ws, 1000, "session ended")
                return None
            room = await self._open_room(hello, clinician)
        except ProtocolError as exc:
            await ws.send(protocol.dumps(protocol.error(exc.code, str(exc))))
            await close_ws(ws, 1008, exc.code)
            return None
        except (asyncio.TimeoutError, ConnectionClosed):
            await close_ws(ws, 1008, "no room_hello")
            return None
        return hello, room

    async def _open_room(self, hello: rooms.RoomHello, clinician: Clinician) -> RoomSession:
        """The session a hello names (resumed), or a new one; ``ProtocolError`` when it may not be."""
        if not clinician.may_see(hello.patient):
            raise ProtocolError("forbidden", f"this token may not stream for patient {hello.patient!r}")
        if hello.session is not None:
            room = self.sessions.get(hello.session)
            if room is None or room.patient != hello.patient or not clinician.may_see(room.patient):
                raise ProtocolError("no_such_session", "that session is not running (it ended, or the server "
                                                       "restarted): start a new one without 'session'")
            self.stats["resumes"] += 1
            return room
        if len(self.sessions) >= self.clinic.max_sessions:
            raise ProtocolError("too_many_sessions", f"this server runs at most {self.clinic.max_sessions} sessions")
        source = PushedAudioSource(description=f"room:{hello.room or hello.patient}",
                                   queue_seconds=self.clinic.queue_seconds)
        try:
            pipeline = await self._calls.run(self.factory, hello, clinician, source)
        except Exception as exc:  # noqa: BLE001 - a session that cannot be built is refused, the server goes on
            log.exception("could not start a session for patient %s", hello.patient)
            raise ProtocolError("unavailable", f"the session could not start: {exc}") from exc
        channel = SessionChannel(self.config, pipeline, self._calls, history=self.store is not None,
                                 stats=self.stats)
        room = RoomSession(hello=hello, clinician=clinician, source=source, channel=channel, pipeline=pipeline)
        loop = asyncio.get_running_loop()
        channel.bridge.attach(loop)
        pipeline.add_sink(_ChannelSink(channel, lambda: channel.bridge.call(channel.end)), first=True)
        self.sessions[room.session_id] = room
        self.stats["rooms"] += 1
        room.thread = threading.Thread(target=self._run_session, args=(room, loop), name=f"session-{room.patient}",
                                       daemon=True)
        room.thread.start()
        log.info("session %s started for patient %s (room %r, clinician %s)", room.session_id, room.patient,
                 hello.room, clinician.id)
        return room

    def _run_session(self, room: RoomSession, loop: asyncio.AbstractEventLoop) -> None:
        """The session's own thread: the pipeline runs until the room ends it (or the server stops)."""
        summary: SessionSummary | None = None
        failure = None
        try:
            summary = room.pipeline.run()
        except Exception as exc:  # noqa: BLE001 - one session's failure must not touch the others
            failure = str(exc)
            log.exception("session %s failed", room.session_id)
        try:
            loop.call_soon_threadsafe(self._session_finished, room, summary, failure)
        except RuntimeError:  # pragma: no cover - the loop is already closed
            pass

    def _session_finished(self, room: RoomSession, summary: SessionSummary | None, failure: str | None) -> None:
        room.summary, room.failure = summary, failure
        self.sessions.pop(room.session_id, None)
        self.finished[room.session_id] = room
        while len(self.finished) > 4 * self.clinic.max_sessions:  # bounded: the oldest ended ones are forgotten
            self.finished.pop(next(iter(self.finished)))
        room.channel.end()
        if room.room is not None:
            room.channel.hub.send(room.room, self._ended_message(room))
        log.info("session %s ended%s", room.session_id, f": {failure}" if failure else "")

    @staticmethod
    def _ended_message(room: RoomSession) -> dict[str, Any]:
        return message("room_ended", session=room.session_id, error=room.failure,
                       summary=room.summary.to_dict() if room.summary is not None else None)

    async def _on_audio(self, room: RoomSession, client: Client, data: bytes) -> None:
        try:
            seq, pcm = rooms.decode_chunk(data)
        except ProtocolError as exc:
            room.channel.hub.send(client, protocol.error(exc.code, str(exc)))
            return
        if seq < room.next_seq:  # re-sent after a reconnect, already taken
            self.stats["duplicate_chunks"] += 1
            room.channel.hub.send(client, message("audio_ack", seq=seq, next_seq=room.next_seq))
            return
        if seq > room.next_seq:
            room.channel.hub.send(client, protocol.error(
                "audio_gap", f"expected chunk {room.next_seq}, got {seq}: re-send from {room.next_seq}"))
            return
        if room.session_id not in self.sessions or room.source.ended:
            room.channel.hub.send(client, protocol.error("session_ended", "the session has ended"))
            return
        # Back-pressure: while the session's queue is full this connection is not read, and TCP slows the room.
        while not room.source.offer(pcm):
            if room.session_id not in self.sessions:  # the session ended (or failed) while the room waited
                room.channel.hub.send(client, protocol.error("session_ended", "the session has ended"))
                return
            await asyncio.sleep(0.02)
        room.next_seq += 1
        room.channel.hub.send(client, message("audio_ack", seq=seq, next_seq=room.next_seq,
                                              received_seconds=round(room.source.received_seconds, 3)))
