"""The connected dashboard clients: what each is sent, in what order, and what happens when one falls behind.

Runs on the server's loop thread only. The hub keeps the session as clients
see it (recent points as JSON text, marks, running summary, latest status) so
that a client that joins, or rejoins, gets ``hello`` + ``snapshot`` and is in
sync; from then on it gets every event through its own bounded queue, written
by its own sender task, so a stalled socket blocks only that task. Points and
marks are never dropped for a client that keeps up; ``heatmap`` and
``status`` frames are "latest wins"; a client whose queue still outgrows its
bound is disconnected with a reason, and resyncs from a snapshot when it
reconnects.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from calibration.quadrants import AFFECT_WORDS, NEUTRAL_RADIUS, QUADRANT_NAMES
from monitor.live.placement import calibration_status
from monitor.serve import protocol
from monitor.serve.config import ServerConfig
from monitor.serve.controls import SessionControls, session_time
from monitor.serve.protocol import SessionSummary, dumps, message

#: What ``hello.speakers`` says: whose voice counts, and which voices are enrolled.
SPEAKERS_FIELDS = ("counting", "patient", "clinician")

if TYPE_CHECKING:  # pragma: no cover
    from monitor.live.events import Mark, Point, SessionInfo, Status
    from monitor.live.heatmap import RollingHeatmap

log = logging.getLogger(__name__)


class RateLimit:
    """Token bucket: a client may send ``rate`` messages a second, in bursts of twice that."""

    def __init__(self, rate: float) -> None:
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


class Client:
    """One websocket client's outgoing side: an ordered queue plus "latest wins" slots.

    Ordered messages (hello, snapshot, point, mark, replies, end) are never
    dropped; ``heatmap``/``status`` frames overwrite an unsent predecessor,
    which is the intended drop.
    """

    def __init__(self, cid: int, ws: ServerConnection, config: ServerConfig) -> None:
        self.id = cid
        self.ws = ws
        self.queue: deque[str] = deque()
        self.queued_chars = 0
        self.slots: dict[str, str] = {}
        self.wakeup = asyncio.Event()
        self.max_messages = config.client_queue_messages
        self.max_chars = config.client_queue_bytes
        self.bucket = RateLimit(config.client_messages_per_s)
        self.dropped_heatmaps = 0
        self.closing = False
        self.kicked = False
        self.sender: asyncio.Task[None] | None = None

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


class ClientHub:
    """Every connected client and the session state a joining client needs.

    ``stats`` is the server's counter dict (the hub counts connections, slow
    disconnects, errors sent and points); ``inbox_dropped`` reads the thread
    bridge's drop count for the status frames.
    """

    def __init__(self, config: ServerConfig, controls: SessionControls | None, *, history: bool,
                 stats: dict[str, int], inbox_dropped: Callable[[], int]) -> None:
        self.config = config
        self.controls = controls
        self.history = history
        self.stats = stats
        self._inbox_dropped = inbox_dropped
        self.session: SessionInfo | None = None
        self.heatmap: RollingHeatmap | None = None
        self.clients: dict[int, Client] = {}
        self._next_id = 1
        self._closers: set[asyncio.Task[None]] = set()
        # Points kept for snapshots, as their JSON text: a reconnect joins strings instead of re-encoding.
        self._points: deque[str] = deque(maxlen=config.snapshot_points)
        self._marks: deque[dict[str, Any]] = deque(maxlen=config.max_marks)
        self._summary = SessionSummary()
        self._points_total = 0
        self._status: dict[str, Any] | None = None
        self._heat_seq = 0
        self._heat_dirty = True
        self._heat_t: float | None = None

    def bind(self, session: SessionInfo | None, heatmap: RollingHeatmap | None) -> None:
        """The session being served, and the pipeline's heat map (safe to snapshot from this thread)."""
        self.session, self.heatmap = session, heatmap

    def session_time(self) -> float | None:
        return session_time(self.controls)

    # ---- the session's events, in the pipeline's order ------------------------------------------
    def deliver(self, kind: str, value: Any) -> None:
        """One event from the thread bridge: ``point``, ``mark`` or ``status``."""
        if kind == "point":
            self.on_point(value)
        elif kind == "mark":
            self.on_mark(value)
        elif kind == "mark_edit":
            self.on_mark_edit(*value)
        elif kind == "status":
            self.on_status(value)
        else:
            raise ValueError(f"unknown dashboard event {kind!r}")

    def on_point(self, point: Point) -> None:
        body = protocol.point_body(point)
        text = dumps(body)
        self._points.append(text)
        self._points_total += 1
        if body.get("counted", True):  # another voice's point is shown, labelled, but is not in the patient's summary
            self._summary.add(body["valence"], body["arousal"], body["t_end"] - body["t_start"], body["confidence"])
        self._heat_dirty = True
        self.stats["points"] += 1
        self.broadcast('{"type":"point",' + text[1:])

    def on_mark(self, mark: Mark) -> None:
        body = protocol.mark_body(mark)
        self._marks.append(body)
        self.broadcast(dumps(message("mark", **body)))

    def on_mark_edit(self, old: Mark, new: Mark | None) -> None:
        """Replace (or drop, ``new=None``) a mark in the snapshot's list and tell every viewer: ``mark_update``."""
        key = protocol.mark_body(old)
        body = None if new is None else protocol.mark_body(new)
        kept = [m for m in self._marks if not (m["t"] == key["t"] and m["wall_time"] == key["wall_time"])]
        if body is not None:
            kept.append(body)
            kept.sort(key=lambda m: (m["t"], m["wall_time"]))
        self._marks.clear()
        self._marks.extend(kept)
        self.broadcast(dumps(message("mark_update", t=key["t"], wall_time=key["wall_time"], mark=body)))

    def on_status(self, status: Status) -> None:
        self._status = protocol.status_body(status)
        self.broadcast_status()

    def set_paused(self, paused: bool) -> None:
        """A client paused or resumed: every client sees it now, not at the pipeline's next status."""
        if self._status is None:
            self._status = {"t": self.session_time(), "speech_active": False, "paused": paused, "queues": {},
                            "dropped_frames": 0, "failed_segments": 0, "segments": 0, "nonspeech_segments": 0,
                            "points": 0,
                            "device": getattr(self.session, "device", None), "speaker_seconds": {}}
        self._status["paused"] = paused
        self.broadcast_status()

    def end(self) -> None:
        """The session is over: a last heat map, then ``end`` behind everything already queued."""
        self.emit_heatmap(force=True)
        self.broadcast(dumps(message("end", t=self.session_time(), summary=self._summary.to_dict(),
                                     linger_s=self.config.linger_s)))

    # ---- clients ---------------------------------------------------------------------------------
    def join(self, ws: ServerConnection, *, ended: bool) -> Client:
        """Register a connection: it is sent ``hello`` and a ``snapshot`` first, then the live stream."""
        client = Client(self._next_id, ws, self.config)
        self._next_id += 1
        self.clients[client.id] = client
        self.stats["connections"] += 1
        log.info("dashboard client %d connected (%d connected)", client.id, len(self.clients))
        client.push(self._hello_message(client))
        client.push(self._snapshot_message(ended))
        status = self._status_message(client)
        if status is not None:
            client.put_latest("status", status)
        client.sender = asyncio.create_task(self._sender(client))
        return client

    def leave(self, client: Client) -> None:
        self.clients.pop(client.id, None)
        if client.sender is not None and not client.closing:
            client.sender.cancel()
        log.info("dashboard client %d left (%d connected)", client.id, len(self.clients))

    def send(self, client: Client, body: dict[str, Any]) -> None:
        """A reply to one client (ack, pong, error), in order with its stream."""
        if client.kicked:
            return
        if body.get("type") == "error":
            self.stats["errors_sent"] += 1
        if not client.push(dumps(body)):
            self.kick(client)

    def broadcast(self, msg: str) -> None:
        for client in list(self.clients.values()):
            if not client.push(msg):
                self.kick(client)

    def broadcast_status(self) -> None:
        for client in list(self.clients.values()):
            msg = self._status_message(client)
            if msg is not None:
                client.put_latest("status", msg)

    def kick(self, client: Client) -> None:
        """Disconnect a client that fell too far behind; it reconnects and resyncs from a snapshot."""
        if client.kicked:
            return
        client.kicked = True
        backlog = len(client.queue)
        self.clients.pop(client.id, None)
        client.queue.clear()
        client.slots.clear()
        self.stats["slow_disconnects"] += 1
        log.warning("dashboard client %d fell %d messages behind; disconnecting it", client.id, backlog)
        if client.sender is not None:
            client.sender.cancel()
        self._spawn(close_ws(client.ws, protocol.CLOSE_TOO_SLOW, f"too far behind ({backlog} messages queued)"))

    async def close_all(self) -> None:
        """Deliver what is queued (bounded by ``flush_timeout_s``), then close every connection with 1001."""
        clients = list(self.clients.values())
        senders = [c.sender for c in clients if c.sender is not None and not c.sender.done()]
        for client in clients:
            client.closing = True
            client.wakeup.set()
        if senders:
            await asyncio.wait(senders, timeout=self.config.flush_timeout_s)
        await asyncio.gather(*(close_ws(c.ws, protocol.CLOSE_SESSION_ENDED, "session ended") for c in clients))
        if self._closers:  # clients being disconnected for falling behind
            await asyncio.wait(list(self._closers), timeout=3.0)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def _sender(self, client: Client) -> None:
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

    # ---- heat map frames -----------------------------------------------------------------------
    def emit_heatmap(self, force: bool = False) -> None:
        """A frame when points arrived, and at most every second otherwise (decay/window fading)."""
        t = self.session_time()
        stale = t is not None and self._heat_t is not None and t - self._heat_t >= 1.0
        if not (force or self._heat_dirty or stale) or not self.clients:
            return
        frame = self._heatmap_frame()
        self._heat_dirty = False
        if frame is None:
            return
        msg = dumps(message("heatmap", **frame))
        for client in list(self.clients.values()):
            client.put_latest("heatmap", msg)

    async def run_heatmaps(self) -> None:
        """The heat map ticker: ``heatmap_hz`` times a second, until cancelled."""
        period = 1.0 / self.config.heatmap_hz
        while True:
            await asyncio.sleep(period)
            try:
                self.emit_heatmap()
            except Exception:  # noqa: BLE001 - a bad frame must not stop the ticker
                log.exception("dashboard heat map frame failed")

    def _heatmap_frame(self) -> dict[str, Any] | None:
        if self.heatmap is None:
            return None
        snap = self.heatmap.snapshot(self.session_time())
        self._heat_seq += 1
        self._heat_t = snap.t
        return protocol.heatmap_body(snap, self._heat_seq)

    # ---- what a joining client is sent ------------------------------------------------------------
    def _snapshot_message(self, ended: bool) -> str:
        paused = self.controls is not None and bool(self.controls.paused)
        head = dumps(message(
            "snapshot", t=self.session_time(), paused=paused, ended=ended, heatmap=self._heatmap_frame(),
            points_total=self._points_total, marks=list(self._marks), summary=self._summary.to_dict(),
            status=self._status,
        ))
        return head[:-1] + ',"points":[' + ",".join(self._points) + "]}"

    def _hello_message(self, client: Client) -> str:
        s = self.session
        hm = self.heatmap.config if self.heatmap is not None else None
        return dumps(message(
            "hello", protocol=protocol.PROTOCOL_VERSION, server="mood-monitor", client_id=client.id,
            session={"id": s.session_id, "started_at": s.started_at, "source": s.source, "patient_id": s.patient_id,
                     "labels": list(s.labels)} if s is not None else None,
            model={"id": s.model_id, "version": s.model_version} if s is not None else None,
            device=s.device if s is not None else None,
            heatmap={"bins": hm.bins, "mode": hm.mode, "half_life_s": hm.half_life_s, "window_s": hm.window_s,
                     "scale_max": hm.display_max_s}
            if hm is not None else None,
            limits={"max_message_bytes": self.config.max_message_bytes, "heatmap_hz": self.config.heatmap_hz,
                    "client_queue_messages": self.config.client_queue_messages,
                    "max_mark_chars": protocol.MAX_MARK_CHARS},
            controls=self.controls is not None, history=self.history,
            circumplex={"neutral_radius": NEUTRAL_RADIUS, "quadrants": QUADRANT_NAMES,
                        "affect_words": [[word, deg] for word, deg in AFFECT_WORDS]},
            calibration=self._calibration(),
            speakers=self._speakers(),
        ))

    def _calibration(self) -> dict[str, Any]:
        """Whether placement is calibrated to the speaker (enrolled) or not; the page's header says it plainly."""
        status = calibration_status(self.session.settings if self.session is not None else None)
        return {k: status[k] for k in ("enrolled", "label", "text")}

    def _speakers(self) -> dict[str, Any]:
        """Whose voice counts in this session (``SpeakerAttributor.describe``): every voice unless a patient
        voiceprint is enrolled; the page says so plainly."""
        described = self.session.settings.get("speakers") if self.session is not None else None
        if isinstance(described, dict):
            return {k: described.get(k) for k in SPEAKERS_FIELDS}
        return {"counting": "all", "patient": False, "clinician": False}

    def _status_message(self, client: Client) -> str | None:
        if self._status is None:
            return None
        body = dict(self._status)
        if self.controls is not None:
            body["paused"] = bool(self.controls.paused)
        body["server"] = {"clients": len(self.clients), "queued": len(client.queue),
                          "dropped_heatmap_frames": client.dropped_heatmaps, "inbox_dropped": self._inbox_dropped()}
        return dumps(message("status", **body))


async def close_ws(ws: ServerConnection, code: int, reason: str, timeout: float = 2.0) -> None:
    """Close with a reason, but never wait on a peer that stopped reading: abort after ``timeout``.

    The library's close() first drains the send buffer, which a stalled client never empties.
    """
    try:
        await asyncio.wait_for(ws.close(code, reason), timeout)
    except Exception:  # noqa: BLE001 - timeout or a connection already gone: abort below
        pass
    finally:
        ws.transport.abort()
