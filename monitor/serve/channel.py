"""One session's dashboard channel: its clients, its inbox from the pipeline, and what its clients may ask.

The one-session dashboard (``server.DashboardServer``) has one channel; the
clinic's server (``clinic.ClinicServer``) has one per running session, all on
one event loop and one port. A channel is the pipeline's ``PointSink`` side
(``point``/``mark``/``status`` from the dispatch thread, through the bounded
``ThreadBridge``) and the loop's side (``serve_client`` reads one connection's
messages and acts on them through the session's controls).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from monitor.serve import protocol
from monitor.serve.blocking import BlockingCalls
from monitor.serve.bridge import ThreadBridge
from monitor.serve.config import ServerConfig
from monitor.serve.controls import SessionControls
from monitor.serve.hub import Client, ClientHub
from monitor.serve.protocol import ProtocolError, message

if TYPE_CHECKING:  # pragma: no cover
    from monitor.live.events import Mark, Point, SessionInfo, Status
    from monitor.live.heatmap import RollingHeatmap

log = logging.getLogger(__name__)

#: How far past the session's elapsed time a client's mark may lie (the page's clock and ours differ a little).
MARK_AHEAD_S = 1.0


class SessionChannel:
    """The dashboard side of one session; see the module docstring. Loop-thread methods are marked as such."""

    def __init__(self, config: ServerConfig, controls: SessionControls | None, calls: BlockingCalls, *,
                 history: bool, stats: dict[str, int]) -> None:
        self.controls = controls
        self.calls = calls
        self.hub = ClientHub(config, controls, history=history, stats=stats, inbox_dropped=lambda: self.bridge.dropped)
        self.bridge = ThreadBridge(config.inbox_size, self.hub.deliver)
        self.ended = False

    # ---- the pipeline's side (any thread) -------------------------------------------------------
    def bind(self, session: SessionInfo, heatmap: RollingHeatmap) -> None:
        self.hub.bind(session, heatmap)

    def point(self, point: Point) -> None:
        self.bridge.post("point", point)

    def mark(self, mark: Mark) -> None:
        self.bridge.post("mark", mark)

    def edit_mark(self, old: Mark, new: Mark | None) -> None:
        self.bridge.post("mark_edit", (old, new))

    def status(self, status: Status) -> None:
        self.bridge.post("status", status)

    # ---- the loop's side --------------------------------------------------------------------------
    def end(self) -> None:
        """Loop thread: every event handed over so far goes out, then ``end``; once."""
        if self.ended:
            return
        self.ended = True
        self.bridge.drain()
        self.hub.end()

    async def serve_client(self, ws: ServerConnection, *, ended: bool) -> None:
        """Loop thread: one dashboard connection, from ``hello`` to its close."""
        client = self.hub.join(ws, ended=ended or self.ended)
        try:
            async for raw in ws:
                if client.kicked:
                    break
                await self.on_client_message(client, raw)
        except ConnectionClosed:
            pass
        finally:
            self.hub.leave(client)

    async def on_client_message(self, client: Client, raw: str | bytes) -> None:
        """Loop thread: check one message and act on it; every problem becomes an ``error`` reply."""
        ref = None
        try:
            if not client.bucket.take():
                raise ProtocolError("rate_limited", "too many messages; slow down")
            msg = protocol.parse_client_message(raw)
            ref = msg["id"]
            await self._act(client, msg)
        except ProtocolError as exc:
            self.hub.send(client, protocol.error(exc.code, str(exc), exc.ref if exc.ref is not None else ref))
        except Exception as exc:  # noqa: BLE001 - a bug here must not take the connection down
            log.exception("dashboard: handling a client message failed")
            self.hub.send(client, protocol.error("internal", f"could not handle the message: {type(exc).__name__}",
                                                 ref))

    async def _act(self, client: Client, msg: dict[str, Any]) -> None:
        kind, ref = msg["type"], msg["id"]
        if kind == "ping":
            self.hub.send(client, message("pong", id=ref, t=msg["t"], server_time=time.time(),
                                          session_time=self.hub.session_time()))
            return
        if self.ended:
            raise ProtocolError("session_ended", "the session has ended", ref)
        controls = self.controls
        if controls is None:
            raise ProtocolError("unavailable", "this server has no pipeline to control", ref)
        if kind in ("pause", "resume"):
            controls.pause() if kind == "pause" else controls.resume()
            paused = bool(controls.paused)
            log.info("dashboard client %d: %s", client.id, kind)
            self.hub.send(client, message("ack", id=ref, of=kind, paused=paused))
            self.hub.set_paused(paused)
        elif kind == "mark":
            t = msg["t"]
            now = self.hub.session_time()
            if t is not None and now is not None and t > now + MARK_AHEAD_S:
                raise ProtocolError("bad_field", f"'t' ({t:.1f} s) lies beyond the session's elapsed time "
                                                 f"({now:.1f} s)", ref)
            # The pipeline fans the mark out to every sink (store, JSONL, and back here for the broadcast);
            # a thread keeps a slow sink off this loop.
            try:
                mark = await self.calls.run(controls.add_mark, msg["text"], t=t, source="dashboard")
            except RuntimeError as exc:  # the pipeline is closing its outputs: the mark could not be kept
                raise ProtocolError("session_ended", str(exc), ref) from exc
            except ValueError as exc:  # the pipeline's own bound on the time
                raise ProtocolError("bad_field", str(exc), ref) from exc
            log.info("dashboard client %d: mark at %.1f s", client.id, mark.t)
            self.bridge.drain()  # the pipeline has fanned the mark out to us: broadcast it before the ack
            self.hub.send(client, message("ack", id=ref, of="mark", mark=protocol.mark_body(mark)))
        elif kind in ("mark_edit", "mark_delete"):
            await self._edit_mark(client, controls, msg)
        elif kind == "end_session":
            log.info("dashboard client %d: end the session", client.id)
            controls.stop()
            self.hub.send(client, message("ack", id=ref, of=kind))

    async def _edit_mark(self, client: Client, controls: SessionControls, msg: dict[str, Any]) -> None:
        """Change or delete a mark through the pipeline (store and every viewer), then acknowledge."""
        kind, ref = msg["type"], msg["id"]
        text = msg["text"] if kind == "mark_edit" else None
        try:
            old = await self.calls.run(controls.edit_mark, msg["t"], msg["wall_time"], text)
        except KeyError as exc:
            raise ProtocolError("no_such_mark", "no mark with that 't' and 'wall_time' in this session", ref) from exc
        except RuntimeError as exc:
            raise ProtocolError("session_ended", str(exc), ref) from exc
        log.info("dashboard client %d: %s at %.1f s", client.id, "mark edited" if text else "mark deleted", old.t)
        self.bridge.drain()  # broadcast the change before the ack
        self.hub.send(client, message("ack", id=ref, of=kind, mark=protocol.mark_body(old)))

