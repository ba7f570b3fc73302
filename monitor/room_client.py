"""The thin room client: ``mood-monitor --remote wss://server --patient ID`` streams this room to a clinic's server.

It captures the microphone (or replays ``--input``), sends 100 ms chunks of
16 kHz int16 PCM over the room protocol (monitor/serve/rooms.py) and prints
the points the server sends back. What the server has not acknowledged is
kept (up to ``max_unacked_s``), so when the connection drops the client
reconnects, names its session and re-sends from the server's ``next_seq``:
no audio is lost and none is counted twice. A replayed file waits while that
buffer is full; a live microphone drops (and counts) audio only if the
server stays unreachable for longer than the buffer holds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import ssl
import sys
import threading
from collections import deque
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from monitor.model.audio_format import SAMPLE_RATE
from monitor.serve import rooms

if TYPE_CHECKING:  # pragma: no cover
    from monitor.audio.sources import AudioSource

log = logging.getLogger(__name__)

CHUNK_SAMPLES = SAMPLE_RATE // 10  # 100 ms


class RoomRefused(RuntimeError):
    """The server refused this room for a reason a reconnect cannot fix (token, patient, limits)."""


@dataclass
class RoomStats:
    """What a streamed session did, as the room saw it."""

    session_id: str | None = None
    chunks_sent: int = 0
    chunks_resent: int = 0
    reconnects: int = 0
    points: int = 0
    dropped_seconds: float = 0.0
    summary: dict[str, Any] | None = None
    error: str | None = None
    received_seconds: float = 0.0


class RoomStreamer:
    """Streams int16 chunks from ``chunks`` (an asyncio queue; ``None`` ends the session) to the server."""

    def __init__(self, url: str, token: str, patient: str, *, room: str = "", clinician: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, max_unacked_s: float = 120.0,
                 reconnect_max_s: float = 10.0, give_up_s: float = 600.0,
                 on_point: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.url = room_url(url)
        self.token = token
        self.hello: dict[str, Any] = {"type": "room_hello", "version": rooms.ROOM_PROTOCOL_VERSION,
                                      "patient": patient, "room": room, "clinician": clinician,
                                      "format": "pcm16", "sample_rate": SAMPLE_RATE}
        self.ssl_context = ssl_context
        self.max_unacked = max(1, int(max_unacked_s * SAMPLE_RATE / CHUNK_SAMPLES))
        self.reconnect_max_s = reconnect_max_s
        self.give_up_s = give_up_s
        self.on_point = on_point
        self.stats = RoomStats()
        self._unacked: deque[tuple[int, bytes]] = deque()
        self._next_seq = 0
        self._room_free = asyncio.Event()  # the unacknowledged buffer has room
        self._room_free.set()
        self._ended = asyncio.Event()
        self._input_done = False
        self._sent_upto = 0  # on this connection, chunks below this have been sent
        self._end_sent = False
        self.connection: ClientConnection | None = None

    async def run(self, chunks: asyncio.Queue[np.ndarray | None]) -> RoomStats:
        """Connect (and reconnect) until the server says the session has ended."""
        delay, down_since = 0.5, None
        feeder = asyncio.create_task(self._take_input(chunks))
        try:
            while not self._ended.is_set():
                try:
                    await self._connection()
                    delay, down_since = 0.5, None
                except RoomRefused:
                    raise
                except (OSError, ConnectionClosed, asyncio.TimeoutError, InvalidStatus) as exc:
                    if isinstance(exc, InvalidStatus) and exc.response.status_code in (401, 403, 404):
                        raise RoomRefused(f"the server refused the room: HTTP {exc.response.status_code}") from exc
                    if self._ended.is_set():
                        break
                    loop = asyncio.get_running_loop()
                    down_since = down_since or loop.time()
                    if loop.time() - down_since > self.give_up_s:
                        raise RoomRefused(f"the server has been unreachable for {self.give_up_s:.0f} s") from exc
                    log.warning("connection to %s lost (%s); reconnecting in %.1f s", self.url, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(self.reconnect_max_s, delay * 2)
                    self.stats.reconnects += 1
        finally:
            feeder.cancel()
        return self.stats

    async def _take_input(self, chunks: asyncio.Queue[np.ndarray | None]) -> None:
        """Number the captured chunks into the unacknowledged buffer (waiting while it is full)."""
        while True:
            pcm = await chunks.get()
            if pcm is None:
                self._input_done = True
                await self._send_pending()
                return
            await self._room_free.wait()
            self._unacked.append((self._next_seq, rooms.encode_chunk(self._next_seq, pcm)))
            self._next_seq += 1
            if len(self._unacked) >= self.max_unacked:
                self._room_free.clear()
            await self._send_pending()

    async def _send_pending(self) -> None:
        ws = self.connection
        if ws is None:
            return
        try:
            while self._sent_upto < self._next_seq:
                seq = self._sent_upto
                self._sent_upto += 1
                first = self._unacked[0][0] if self._unacked else self._next_seq  # the buffer is consecutive
                if seq >= first:  # (below it: acknowledged meanwhile)
                    await ws.send(self._unacked[seq - first][1])
                    self.stats.chunks_sent += 1
            if self._input_done and not self._unacked and not self._end_sent:
                self._end_sent = True
                await ws.send(json.dumps({"type": "room_end"}))
        except ConnectionClosed:
            pass  # the reader notices and reconnects

    async def _connection(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with connect(self.url, additional_headers=headers, ssl=self.ssl_context, open_timeout=10,
                           max_size=2**24, ping_interval=10, ping_timeout=20, close_timeout=2) as ws:
            hello = dict(self.hello, session=self.stats.session_id)
            await ws.send(json.dumps(hello))
            ready = await self._await_ready(ws)
            if ready["type"] == "room_ended":  # it ended while this room was away: nothing left to send
                self._on_message(json.dumps(ready))
                return
            self.stats.session_id = ready["session"]
            server_next = int(ready["next_seq"])
            self._acknowledge(server_next)
            resent = sum(1 for s, _ in self._unacked if s >= server_next)
            if self.stats.reconnects and resent:
                self.stats.chunks_resent += resent
                log.info("resumed session %s: re-sending %d chunks from %d", self.stats.session_id, resent,
                         server_next)
            self._sent_upto = server_next
            self._end_sent = False
            self.connection = ws
            try:
                await self._send_pending()
                async for raw in ws:
                    self._on_message(raw)
                    if self._ended.is_set():
                        return
                    await self._send_pending()
            finally:
                self.connection = None

    @staticmethod
    async def _await_ready(ws: ClientConnection) -> dict[str, Any]:
        """Skip the dashboard's hello and snapshot up to ``room_ready`` (or ``room_ended``: a resumed session that
        ended meanwhile); an ``error`` first is a refusal."""
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), timeout=15))
            if msg.get("type") in ("room_ready", "room_ended"):
                return dict(msg)
            if msg.get("type") == "error":
                raise RoomRefused(f"the server refused the room: {msg.get('message')}")

    def _acknowledge(self, next_seq: int) -> None:
        while self._unacked and self._unacked[0][0] < next_seq:
            self._unacked.popleft()
        if len(self._unacked) < self.max_unacked:
            self._room_free.set()

    def _on_message(self, raw: str | bytes) -> None:
        msg = json.loads(raw)
        kind = msg.get("type")
        if kind == "audio_ack":
            self._acknowledge(int(msg["next_seq"]))
            self.stats.received_seconds = float(msg.get("received_seconds", self.stats.received_seconds))
        elif kind == "point":
            self.stats.points += 1
            if self.on_point is not None:
                self.on_point(msg)
        elif kind == "room_ended":
            self.stats.summary = msg.get("summary")
            self.stats.error = msg.get("error")
            self._ended.set()
        elif kind == "error" and msg.get("code") == "audio_gap":
            self._sent_upto = min(self._sent_upto, self._unacked[0][0] if self._unacked else self._sent_upto)


def room_url(url: str) -> str:
    """``wss://host:port`` (or http/https) -> the room endpoint; a path other than /room is an error."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"--remote needs a wss:// (or ws:// on this computer) address, got {url!r}")
    if parts.path not in ("", "/", rooms.ROOM_PATH):
        raise ValueError(f"--remote is the server's address (e.g. wss://clinic:8765), not {parts.path!r}")
    return urlunsplit((scheme, parts.netloc, rooms.ROOM_PATH, "", ""))


def capture_chunks(source: AudioSource, loop: asyncio.AbstractEventLoop,
                   chunks: asyncio.Queue[np.ndarray | None]) -> threading.Thread:
    """A thread that reads the source's frames and queues 100 ms int16 chunks (``None`` at the end, which
    ``source.stop()`` brings about)."""

    def put(item: np.ndarray | None) -> None:
        asyncio.run_coroutine_threadsafe(chunks.put(item), loop).result()

    def run() -> None:
        pending: list[np.ndarray] = []
        n = 0
        try:
            for frame in source.frames():
                pending.append(frame.samples)
                n += len(frame.samples)
                if n >= CHUNK_SAMPLES:
                    put(np.concatenate(pending))
                    pending, n = [], 0
        except Exception as exc:  # noqa: BLE001 - what was captured is still sent
            log.error("audio input ended: %s", exc)
        finally:
            if pending:
                put(np.concatenate(pending))
            put(None)

    thread = threading.Thread(target=run, name="room-capture", daemon=True)
    thread.start()
    return thread


async def stream_source(streamer: RoomStreamer, source: AudioSource) -> RoomStats:
    chunks: asyncio.Queue[np.ndarray | None] = asyncio.Queue(maxsize=50)
    capture_chunks(source, asyncio.get_running_loop(), chunks)
    return await streamer.run(chunks)


def run_remote(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The CLI's ``--remote`` path: stream, print each point, print the server's summary at the end."""
    from monitor.options import EXIT_ENDED_EARLY, EXIT_INTERRUPTED, EXIT_OK, EXIT_SETUP, open_source

    if not args.patient:
        parser.error("--remote needs --patient ID: the server keeps the session with that patient")
    if not args.token:
        parser.error("--remote needs --token: the clinician's token for that server")
    context = None
    if args.remote.startswith(("wss:", "https:")):
        context = ssl.create_default_context(cafile=args.cafile)
    try:
        source = open_source(args, args.frame_ms)
        streamer = RoomStreamer(args.remote, args.token, args.patient, room=args.room, clinician=args.clinician,
                                ssl_context=context, on_point=_print_point)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SETUP
    presses = 0

    def interrupt(signum: int, frame: FrameType | None) -> None:
        nonlocal presses
        presses += 1
        if presses > 1:
            raise KeyboardInterrupt
        log.info("ending the session: sending what is captured (Ctrl-C again to abort)")
        source.stop()

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        stats = asyncio.run(stream_source(streamer, source))
    except KeyboardInterrupt:
        print("aborted: audio not yet acknowledged by the server was not sent", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RoomRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SETUP
    finally:
        signal.signal(signal.SIGINT, previous)
    print(f"session {stats.session_id}: {stats.points} points; {stats.reconnects} reconnects, "
          f"{stats.chunks_resent} chunks re-sent", file=sys.stderr)
    return EXIT_ENDED_EARLY if stats.error else EXIT_OK


def _print_point(body: dict[str, Any]) -> None:
    print(json.dumps({k: body.get(k) for k in ("t_start", "t_end", "valence", "arousal", "confidence", "speaker")}),
          flush=True)
