"""The dashboard server's websocket protocol, driven by plain websocket clients.

The server runs exactly as in a session (its own thread and loop); the test
plays the pipeline's dispatch thread by calling ``point()``/``mark()``/
``status()``. Timing tests measure and assert bounds, and print what they
measured (``pytest -s`` shows it). The server's lifecycle and thread bridge
are also tested on their own, at the end; its HTTP router in test_serve_router.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from monitor.serve import protocol
from monitor.live.events import Mark, Point, SessionInfo, Status
from monitor.live.heatmap import HeatmapConfig, RollingHeatmap
from monitor.serve.server import DashboardServer, ServerConfig

TOKEN = "test-token-123"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


class FakeControls:
    """Stands in for MonitorPipeline: marks fan out to the server as the pipeline's sinks would.

    Like the pipeline, it exists before the server (which takes it at construction) and gets the server
    as a sink afterwards.
    """

    def __init__(self):
        self.server: DashboardServer | None = None
        self.paused = False
        self.session_time = 0.0
        self.marks: list[Mark] = []

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def add_mark(self, text, t=None, source="dashboard") -> Mark:
        mark = Mark(t=self.session_time if t is None else float(t), text=str(text), source=source)
        self.marks.append(mark)
        self.server.mark(mark)
        return mark

    def edit_mark(self, t, wall_time, text) -> Mark:
        old = next((m for m in self.marks if abs(m.t - t) < 6e-4 and abs(m.wall_time - wall_time) < 6e-4), None)
        if old is None:
            raise KeyError("no such mark")
        new = None if text is None else Mark(old.t, text, old.wall_time, old.source)
        self.marks[self.marks.index(old)] = new or old
        if new is None:
            self.marks.remove(old)
        self.server.edit_mark(old, new)
        return old

    stopped = False

    def stop(self) -> None:
        self.stopped = True


SESSION = SessionInfo(session_id="20260101T000000Z-abcdef", started_at=1767225600.0, model_id="tiny@test",
                      model_version="test", device="cpu", labels=("neutral", "happy", "sad", "angry"),
                      source="file:test.wav", patient_id="p-007")


@pytest.fixture
def make_server():
    servers: list[DashboardServer] = []

    def make(store=None, controls: bool = True, **config) -> DashboardServer:
        config.setdefault("port", 0)
        config.setdefault("token", TOKEN)
        fake = FakeControls() if controls else None
        server = DashboardServer(ServerConfig(**config), store=store, controls=fake)
        if fake is not None:
            fake.server = server
        server.start(SESSION, RollingHeatmap(HeatmapConfig(bins=16, smoothing_sigma=0)))
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()
        server.end_linger()


def make_point(i: int, valence: float = 0.3, arousal: float = -0.2, t: float | None = None) -> Point:
    t0 = 2.0 * i if t is None else t
    return Point(index=i, t_start=t0, t_end=t0 + 1.5, valence=valence, arousal=arousal, confidence=0.8,
                 probabilities={"happy": 0.8, "neutral": 0.15, "sad": 0.05}, latency_ms=95.0)


def emit(server: DashboardServer, point: Point) -> None:
    """What the pipeline's dispatch does: heat map first, then the sinks."""
    server.heatmap.add_point(point)
    server.point(point)


def ws_url(server: DashboardServer, token: str | None = TOKEN) -> str:
    return f"ws://127.0.0.1:{server.port}/ws" + (f"?token={token}" if token is not None else "")


def http_get(server: DashboardServer, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status, dict(res.headers), res.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


async def recv_json(ws, timeout: float = 5.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_type(ws, kind: str, timeout: float = 5.0) -> dict:
    """Next message of a type, skipping the periodic heatmap/status frames."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await recv_json(ws, max(0.01, deadline - time.monotonic()))
        if msg["type"] == kind:
            return msg


async def recv_types(ws, kinds: tuple[str, ...], timeout: float = 5.0) -> list[dict]:
    """The first message of each of several types, whatever order they arrive in."""
    deadline = time.monotonic() + timeout
    got: dict[str, dict] = {}
    while len(got) < len(kinds):
        msg = await recv_json(ws, max(0.01, deadline - time.monotonic()))
        if msg["type"] in kinds and msg["type"] not in got:
            got[msg["type"]] = msg
    return [got[k] for k in kinds]


async def open_client(server: DashboardServer, **kwargs):
    """Connect and consume hello + snapshot; returns (ws, hello, snapshot)."""
    ws = await connect(ws_url(server), open_timeout=10, **kwargs)
    hello = await recv_json(ws)
    snapshot = await recv_json(ws)
    assert (hello["type"], snapshot["type"]) == ("hello", "snapshot")
    return ws, hello, snapshot


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


# ---- access ------------------------------------------------------------------------------------

def test_page_and_assets_require_the_token(make_server):
    server = make_server()
    assert http_get(server, "/")[0] == 403
    assert http_get(server, "/?token=wrong")[0] == 403
    assert http_get(server, "/dashboard.js")[0] == 403
    status, headers, body = http_get(server, f"/?token={TOKEN}")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert f"dashboard.js?token={TOKEN}".encode() in body and b"__TOKEN__" not in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["Cache-Control"] == "no-store"
    for asset, kind in (("dashboard.js", "javascript"), ("dashboard.css", "css")):
        status, headers, body = http_get(server, f"/{asset}?token={TOKEN}")
        assert status == 200 and kind in headers["Content-Type"] and len(body) > 1000
    assert http_get(server, "/dashboard.js", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert http_get(server, f"/nothing-here?token={TOKEN}")[0] == 404
    assert http_get(server, f"/ws?token={TOKEN}")[0] == 426  # plain GET on the websocket path
    assert server.stats["refused"] == 3


def test_websocket_refuses_wrong_or_missing_token_and_foreign_origin(make_server):
    server = make_server()

    async def main():
        for token in (None, "", "wrong", TOKEN + "x"):
            with pytest.raises(InvalidStatus) as info:
                await connect(ws_url(server, token), open_timeout=5)
            assert info.value.response.status_code == 403
        with pytest.raises(InvalidStatus) as info:
            await connect(ws_url(server), origin="http://evil.example", open_timeout=5)
        assert info.value.response.status_code == 403
        # The page's own origin is fine, and so is no Origin at all (a non-browser client with the token).
        ws = await connect(ws_url(server), origin=f"http://127.0.0.1:{server.port}", open_timeout=5)
        assert (await recv_json(ws))["type"] == "hello"
        await ws.close()

    asyncio.run(main())
    assert server.client_count == 0 or wait_for(lambda: server.client_count == 0) is None


def test_foreign_host_header_is_refused_on_a_loopback_bind(make_server):
    """DNS rebinding: a page on evil.example resolved to 127.0.0.1 sends Host: evil.example."""
    server = make_server()
    assert http_get(server, f"/?token={TOKEN}", {"Host": f"evil.example:{server.port}"})[0] == 421
    assert http_get(server, f"/?token={TOKEN}", {"Host": f"localhost:{server.port}"})[0] == 200


def test_non_loopback_bind_warns(make_server, caplog):
    with caplog.at_level("WARNING", logger="monitor.serve.server"):
        make_server(host="0.0.0.0")
    assert any("0.0.0.0" in r.getMessage() and "not encrypted" in r.getMessage() for r in caplog.records)


def test_start_prints_the_address_and_fails_clearly_on_a_busy_port(make_server, capsys):
    first = make_server()
    assert re.search(rf"^dashboard: http://127\.0\.0\.1:{first.port}/\?token={TOKEN}$", capsys.readouterr().err, re.M)
    with pytest.raises(RuntimeError, match="cannot serve"):
        make_server(port=first.port)


def test_tls(make_server, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = make_server(certfile=str(cert), keyfile=str(key))
    assert server.url.startswith("https://")
    context = ssl.create_default_context(cafile=str(cert))

    async def main():
        async with connect(f"wss://127.0.0.1:{server.port}/ws?token={TOKEN}", ssl=context, open_timeout=10) as ws:
            assert (await recv_json(ws))["type"] == "hello"

    asyncio.run(main())
    with urllib.request.urlopen(f"https://127.0.0.1:{server.port}/?token={TOKEN}", context=context, timeout=10) as res:
        assert res.status == 200


# ---- messages ----------------------------------------------------------------------------------

def test_hello_and_snapshot_bring_a_late_client_in_sync(make_server):
    server = make_server()
    for i in range(5):
        emit(server, make_point(i, valence=-0.5 + 0.2 * i, arousal=0.4))
    server.controls.session_time = 11.0
    server.controls.add_mark("topic: sleep", t=3.0)
    server.status(Status(t=11.0, speech_active=True, paused=False, frame_queue=1, segment_queue=0, result_queue=0,
                         dropped_frames=2, failed_segments=0, segments=5, points=5, device="cpu"))
    wait_for(lambda: server.stats["points"] == 5)

    async def main():
        ws, hello, snap = await open_client(server)
        await ws.close()
        return hello, snap

    hello, snap = asyncio.run(main())
    assert hello["protocol"] == protocol.PROTOCOL_VERSION
    assert hello["session"]["id"] == SESSION.session_id and hello["session"]["patient_id"] == "p-007"
    assert hello["model"] == {"id": "tiny@test", "version": "test"} and hello["device"] == "cpu"
    assert hello["controls"] is True and hello["history"] is False
    # the page applies the server's one quadrant rule (calibration.quadrants), sent here
    from calibration.quadrants import AFFECT_WORDS, NEUTRAL_RADIUS, QUADRANT_NAMES

    assert hello["circumplex"] == {"neutral_radius": NEUTRAL_RADIUS, "quadrants": QUADRANT_NAMES,
                                   "affect_words": [list(w) for w in AFFECT_WORDS]}
    # no enrolment recorded for this session: the page is told, in words, that placement is uncalibrated
    assert hello["calibration"]["enrolled"] is False and hello["calibration"]["label"] == "uncalibrated"
    assert "Uncalibrated" in hello["calibration"]["text"]
    assert [p["index"] for p in snap["points"]] == list(range(5)) and snap["points_total"] == 5
    assert snap["points"][2]["valence"] == pytest.approx(-0.1)
    assert [m["text"] for m in snap["marks"]] == ["topic: sleep"]
    assert snap["summary"]["points"] == 5 and snap["summary"]["speech_seconds"] == pytest.approx(7.5)
    assert snap["summary"]["mean_valence"] == pytest.approx(-0.1)
    assert snap["status"]["dropped_frames"] == 2 and snap["ended"] is False
    grid = protocol.decode_heatmap(snap["heatmap"])
    expected = server.heatmap.snapshot().grid
    assert grid.shape == expected.shape
    np.testing.assert_allclose(grid, expected, atol=expected.max() / 255)


def test_points_marks_status_and_heatmap_frames_stream_live(make_server):
    server = make_server(heatmap_hz=20)

    async def main():
        ws, _, snap = await open_client(server)
        assert snap["points"] == []
        emit(server, make_point(0, 0.9, 0.9))
        point = await recv_type(ws, "point")
        heat = await recv_type(ws, "heatmap", timeout=2)
        server.status(Status(t=3.0, speech_active=False, paused=False, frame_queue=0, segment_queue=0,
                             result_queue=0, dropped_frames=0, failed_segments=0, segments=1, points=1, device="cpu"))
        status = await recv_type(ws, "status")
        await ws.close()
        return point, heat, status

    point, heat, status = asyncio.run(main())
    assert point["index"] == 0 and point["probabilities"] == {"happy": 0.8, "neutral": 0.15, "sad": 0.05}
    assert point["latency_ms"] == 95.0 and point["t_end"] == 1.5
    grid = protocol.decode_heatmap(heat)
    assert heat["points"] == 1 and np.unravel_index(grid.argmax(), grid.shape) == (15, 15)  # top right
    assert status["points"] == 1 and status["server"]["clients"] == 1


def test_malformed_messages_get_an_error_and_disturb_nobody(make_server):
    server = make_server(max_message_bytes=4096)
    bad = [
        ("not json", "bad_json"),
        ("[1, 2]", "bad_message"),
        ('{"text": "no type"}', "bad_message"),
        ('{"type": 7}', "bad_message"),
        ('{"type": "shutdown"}', "unknown_type"),
        ('{"type": "mark"}', "bad_field"),
        ('{"type": "mark", "text": "   "}', "bad_field"),
        ('{"type": "mark", "text": "' + "x" * 501 + '"}', "bad_field"),
        ('{"type": "mark", "text": "ok", "t": -1}', "bad_field"),
        ('{"type": "mark", "text": "ok", "t": "soon"}', "bad_field"),
        ('{"type": "ping", "t": "x"}', "bad_field"),
        ('{"type": "ping", "id": {"nested": 1}}', "bad_field"),
        (b"\x00\x01binary", "binary_unsupported"),
    ]

    async def main():
        a, _, _ = await open_client(server)
        b, _, _ = await open_client(server)
        for raw, code in bad:
            await a.send(raw)
            reply = await recv_type(a, "error")
            assert reply["code"] == code, raw
            assert reply["message"]
        await a.send(json.dumps({"type": "ping", "id": "still-there", "t": 1.5}))
        pong = await recv_type(a, "pong")
        assert pong["id"] == "still-there" and pong["t"] == 1.5
        # Over the size limit: the library closes that connection (1009); the other client carries on.
        await a.send(json.dumps({"type": "mark", "text": "y" * 5000}))
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await recv_json(a)
        assert info.value.rcvd.code == 1009
        emit(server, make_point(0))
        assert (await recv_type(b, "point"))["index"] == 0
        await b.close()

    asyncio.run(main())
    assert server.controls.marks == [] and server.controls.paused is False


def test_mark_round_trip_and_pause_resume(make_server):
    server = make_server()
    server.controls.session_time = 42.5

    async def main():
        a, _, _ = await open_client(server)
        b, _, _ = await open_client(server)
        await a.send(json.dumps({"type": "mark", "text": "  patient laughs\n", "id": "m-1"}))
        ack, seen_a = await recv_types(a, ("ack", "mark"))
        seen_b = await recv_type(b, "mark")
        await a.send(json.dumps({"type": "mark", "text": "earlier moment", "t": 12.0, "id": 2}))
        ack2, _ = await recv_types(a, ("ack", "mark"))
        await b.send(json.dumps({"type": "pause", "id": "p"}))
        paused = await recv_type(b, "ack")
        status_a = await recv_type(a, "status")
        await b.send(json.dumps({"type": "resume"}))
        resumed = await recv_type(b, "ack")
        for ws in (a, b):
            await ws.close()
        return ack, seen_a, seen_b, ack2, paused, status_a, resumed

    ack, seen_a, seen_b, ack2, paused, status_a, resumed = asyncio.run(main())
    assert ack["id"] == "m-1" and ack["of"] == "mark" and ack["mark"]["text"] == "patient laughs"
    assert seen_a == seen_b == {"type": "mark", **ack["mark"]} and seen_a["t"] == 42.5
    assert seen_a["source"] == "dashboard"
    assert ack2["id"] == 2 and ack2["mark"]["t"] == 12.0
    assert [m.text for m in server.controls.marks] == ["patient laughs", "earlier moment"]
    assert paused == {"type": "ack", "id": "p", "of": "pause", "paused": True}
    assert status_a["paused"] is True
    assert resumed["paused"] is False and server.controls.paused is False


def test_without_controls_requests_are_refused_politely(make_server):
    server = make_server(controls=False)

    async def main():
        ws, hello, _ = await open_client(server)
        await ws.send(json.dumps({"type": "pause"}))
        err = await recv_type(ws, "error")
        await ws.close()
        return hello, err

    hello, err = asyncio.run(main())
    assert hello["controls"] is False and err["code"] == "unavailable"


def test_flooding_client_is_rate_limited_not_disconnected(make_server):
    server = make_server(client_messages_per_s=10)

    async def main():
        ws, _, _ = await open_client(server)
        for i in range(60):
            await ws.send(json.dumps({"type": "ping", "id": i}))
        codes = []
        while len(codes) < 60:
            msg = await recv_json(ws)
            if msg["type"] in ("pong", "error"):
                codes.append(msg["type"] if msg["type"] == "pong" else msg["code"])
        await asyncio.sleep(0.3)
        await ws.send(json.dumps({"type": "ping", "id": "after"}))
        after = await recv_type(ws, "pong")
        await ws.close()
        return codes, after

    codes, after = asyncio.run(main())
    assert 15 <= codes.count("pong") <= 30 and codes.count("rate_limited") == 60 - codes.count("pong")
    assert after["id"] == "after"


# ---- many and slow clients -----------------------------------------------------------------------

def _post_points(server: DashboardServer, n: int, rate_hz: float, sent: dict[int, float], call_s: list[float],
                 start: int = 0) -> threading.Thread:
    """Play the pipeline's dispatch thread: n points at rate_hz, recording when each was handed over."""
    def run():
        period = 1.0 / rate_hz
        t0 = time.perf_counter()
        for k in range(n):
            i = start + k
            target = t0 + k * period
            while time.perf_counter() < target:
                time.sleep(max(0.0, min(0.001, target - time.perf_counter())))
            point = make_point(i)
            server.heatmap.add_point(point)
            before = time.perf_counter()
            sent[i] = before
            server.point(point)
            call_s.append(time.perf_counter() - before)

    thread = threading.Thread(target=run, name="fake-dispatch")
    thread.start()
    return thread


async def _collect_points(ws, indices: set[int], received: dict[int, float], timeout: float) -> list[int]:
    order = []
    deadline = time.monotonic() + timeout
    while not indices.issubset(received):
        msg = json.loads(await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic())))
        if msg["type"] == "point":
            received[msg["index"]] = time.perf_counter()
            order.append(msg["index"])
    return order


def _pct(values, q) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def test_fifty_clients_each_get_every_point(make_server):
    n_clients, n_points, rate = 50, 150, 50.0
    server = make_server()

    async def main():
        clients = await asyncio.gather(*(open_client(server) for _ in range(n_clients)))
        sockets = [c[0] for c in clients]
        received = [dict() for _ in sockets]
        sent: dict[int, float] = {}
        call_s: list[float] = []
        thread = _post_points(server, n_points, rate, sent, call_s)
        orders = await asyncio.gather(*(_collect_points(ws, set(range(n_points)), got, 30.0)
                                        for ws, got in zip(sockets, received, strict=True)))
        await asyncio.to_thread(thread.join)
        await asyncio.gather(*(ws.close() for ws in sockets))
        return orders, received, sent, call_s

    started = time.perf_counter()
    orders, received, sent, call_s = asyncio.run(main())
    elapsed = time.perf_counter() - started
    for order in orders:
        assert order == list(range(n_points))  # every point, in order, no duplicates
    # Fan-out time: from handing a point to the server until the last of the 50 clients has it.
    fan_out = [max(got[i] for got in received) - sent[i] for i in range(n_points)]
    print(f"\n50 clients x {n_points} points at {rate:.0f} Hz in {elapsed:.1f} s: fan-out to all clients "
          f"p50 {_pct(fan_out, 50):.1f} ms, p95 {_pct(fan_out, 95):.1f} ms, max {_pct(fan_out, 100):.1f} ms; "
          f"point() call max {max(call_s) * 1e3:.2f} ms")
    assert _pct(fan_out, 95) < 2000.0
    assert max(call_s) < 0.05


def _stalled_socket(port: int) -> socket.socket:
    """A client that completes the websocket handshake and then never reads: a frozen tablet."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _read_close_frame(sock: socket.socket, timeout: float = 5.0) -> tuple[int, str]:
    """Read (unmasked, server-sent) websocket frames until the close frame; returns its code and reason."""
    sock.settimeout(timeout)
    buf = b""
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise AssertionError("connection ended without a close frame")
        buf += chunk
        while len(buf) >= 2:
            opcode, length, offset = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if length == 126:
                length, offset = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                length, offset = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < offset + length:
                break
            payload, buf = buf[offset:offset + length], buf[offset + length:]
            if opcode == 0x8:
                return int.from_bytes(payload[:2], "big"), payload[2:].decode()


def test_client_too_far_behind_is_disconnected_with_a_reason(make_server):
    server = make_server(client_queue_messages=50)
    sock = _stalled_socket(server.port)
    try:
        wait_for(lambda: server.client_count == 1)
        for i in range(20_000):
            emit(server, make_point(i))
            if i % 200 == 0:
                time.sleep(0.01)  # let the server write what the socket takes
            if server.stats["slow_disconnects"]:
                break
        assert server.stats["slow_disconnects"] == 1 and server.client_count == 0
        # The client wakes up (within the server's 2 s close timeout) and finds the reason after its backlog.
        code, reason = _read_close_frame(sock)
    finally:
        sock.close()
    assert code == protocol.CLOSE_TOO_SLOW and reason.startswith("too far behind")
    print(f"\nstalled client disconnected after {i + 1} points: {code} {reason!r}")


def test_stalled_client_does_not_delay_the_others(make_server):
    """Measured: delivery delays to healthy clients without, and with, a client that stopped reading.

    The session already has 5000 points, so the stalled client's snapshot alone
    (~1.3 MB) fills its socket buffers; every point after that piles up in its
    queue until it is disconnected (after 100). Phases alternate (without,
    with, without, with) so that load from other processes hits both alike.
    """
    n_healthy, n_points, rate = 5, 150, 100.0
    server = make_server(client_queue_messages=100)
    for i in range(5000):
        emit(server, make_point(i, t=-10_000.0 + i))
    wait_for(lambda: server.stats["points"] == 5000)
    socks = []

    async def phase(start: int, stalled: bool):
        clients = [(await open_client(server))[0] for _ in range(n_healthy)]
        if stalled:
            socks.append(await asyncio.to_thread(_stalled_socket, server.port))
        await asyncio.to_thread(wait_for, lambda: server.client_count == n_healthy + int(stalled))
        await asyncio.sleep(0.3)  # the stalled client's snapshot is written and stuck before we measure
        received = [dict() for _ in clients]
        sent: dict[int, float] = {}
        call_s: list[float] = []
        thread = _post_points(server, n_points, rate, sent, call_s, start=start)
        wanted = set(range(start, start + n_points))
        orders = await asyncio.gather(*(_collect_points(ws, wanted, got, 30.0)
                                        for ws, got in zip(clients, received, strict=True)))
        await asyncio.to_thread(thread.join)
        assert all(order == sorted(wanted) for order in orders)
        await asyncio.gather(*(ws.close() for ws in clients))
        return [got[i] - sent[i] for got in received for i in wanted], call_s

    async def main():
        out = {False: ([], []), True: ([], [])}
        for k, stalled in enumerate((False, True, False, True)):
            delays, calls = await phase(10_000 * (k + 1), stalled)
            out[stalled][0].extend(delays)
            out[stalled][1].extend(calls)
        return out

    try:
        out = asyncio.run(main())
    finally:
        for sock in socks:
            sock.close()
    base, delays, calls = out[False][0], out[True][0], out[False][1] + out[True][1]
    print(f"\nhealthy-client delay, {n_healthy} clients, 2 x {n_points} points at {rate:.0f} Hz: "
          f"without a stalled client p50 {_pct(base, 50):.1f} / p95 {_pct(base, 95):.1f} / "
          f"max {_pct(base, 100):.1f} ms; with one p50 {_pct(delays, 50):.1f} / p95 {_pct(delays, 95):.1f} / "
          f"max {_pct(delays, 100):.1f} ms; point() call max {max(calls) * 1e3:.2f} ms; "
          f"stalled clients disconnected: {server.stats['slow_disconnects']} of 2")
    assert server.stats["slow_disconnects"] == 2  # each stalled client fell behind and was dropped
    # A server that waited on the stalled client would hold every point until it was dropped (or forever).
    assert _pct(delays, 95) < 2 * _pct(base, 95) + 100.0
    assert _pct(delays, 100) < 2000.0
    assert max(calls) < 0.05  # the pipeline's thread never waited on a client


# ---- end of session ---------------------------------------------------------------------------

def test_close_flushes_points_then_closes_with_1001(make_server):
    server = make_server()

    async def main():
        ws, _, _ = await open_client(server)
        for i in range(100):
            emit(server, make_point(i))
        started = time.perf_counter()
        closer = asyncio.create_task(asyncio.to_thread(server.close))
        points, end = [], None
        with pytest.raises(ConnectionClosed) as info:
            while True:
                msg = await recv_json(ws)
                if msg["type"] == "point":
                    points.append(msg["index"])
                elif msg["type"] == "end":
                    end = msg
        await closer
        return points, end, info.value.rcvd, time.perf_counter() - started

    points, end, close_frame, took = asyncio.run(main())
    assert points == list(range(100))
    assert end["summary"]["points"] == 100
    assert (close_frame.code, close_frame.reason) == (1001, "session ended")
    assert took < 3.0


def test_linger_keeps_the_last_state_available(make_server):
    server = make_server(linger_s=30)
    for i in range(3):
        emit(server, make_point(i))
    started = time.perf_counter()
    server.close()  # returns at once: the pipeline's summary is not held up by the linger
    assert time.perf_counter() - started < 0.5

    async def main():
        await asyncio.sleep(0.3)
        ws, _, snap = await open_client(server)  # connecting after the session ended still works
        await ws.send(json.dumps({"type": "mark", "text": "too late"}))
        err = await recv_type(ws, "error")
        await ws.close()
        return snap, err

    snap, err = asyncio.run(main())
    assert snap["ended"] is True and [p["index"] for p in snap["points"]] == [0, 1, 2]
    assert err["code"] == "session_ended"
    wait_for(lambda: server.client_count == 0)
    server.end_linger()
    assert server._thread is not None and not server._thread.is_alive()
    assert time.perf_counter() - started < 10
    with pytest.raises(OSError):
        http_get(server, f"/?token={TOKEN}")  # nothing listens any more


def test_linger_ends_by_itself(make_server):
    server = make_server(linger_s=0.5)
    server.close()
    wait_for(lambda: not server._thread.is_alive(), timeout=10)


# ---- history endpoint ---------------------------------------------------------------------------

def _history_store(tmp_path):
    """A real store with one patient, one session and two points."""
    from monitor.history.store import Store

    store = Store.open(tmp_path / "store.sqlite")
    session = SessionInfo(session_id="20260101T000000Z-aaaaaa", started_at=time.time() - 60, model_id="tiny@test",
                          model_version="test", device="cpu", labels=("neutral", "happy"), source="test")
    store.begin_session(session, "p one")
    store.add_points(session.session_id, [make_point(0), make_point(1, valence=-0.4)])
    store.end_session(session.session_id)
    return store


def test_history_endpoint_answers_from_the_real_store(make_server, tmp_path):
    no_store = make_server()
    status, headers, body = http_get(no_store, f"/api/history?patient=p1&token={TOKEN}")
    assert status == 404 and "no store" in json.loads(body)["error"]

    store = _history_store(tmp_path)
    try:
        server = make_server(store=store)
        assert http_get(server, "/api/history?patient=p%20one")[0] == 403
        status, headers, body = http_get(server, f"/api/history?patient=p%20one&days=30&token={TOKEN}")
        assert status == 200 and headers["Content-Type"] == "application/json"
        data = json.loads(body)
        assert data["patient"] == "p one" and len(data["days"]) == 30
        assert sum(d["metrics"]["points"] for d in data["days"]) == 2 and len(data["sessions"]) == 1
        assert http_get(server, f"/api/history?token={TOKEN}")[0] == 400
        assert http_get(server, f"/api/history?patient=p1&days=0&token={TOKEN}")[0] == 400
        assert http_get(server, f"/api/history?patient=p1&days=abc&token={TOKEN}")[0] == 400
        # An unknown patient is 404, as documented (not 200 with empty days).
        status, _, body = http_get(server, f"/api/history?patient=nobody&token={TOKEN}")
        assert status == 404 and "nobody" in json.loads(body)["error"]
        assert http_get(server, "/api/history?patient=p%20one", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    finally:
        store.close()


_LINGERING_MONITOR = """
import atexit, sys, time
from monitor.history.store import Store
from monitor.live.events import SessionInfo
from monitor.live.heatmap import HeatmapConfig, RollingHeatmap
from monitor.serve.server import DashboardServer, ServerConfig

store = Store.open(sys.argv[1])
session = SessionInfo(session_id="20260101T000000Z-bbbbbb", started_at=time.time(), model_id="m", model_version="v",
                      device="cpu", labels=("neutral",), source="test")
store.begin_session(session, "p1")
server = DashboardServer(ServerConfig(port=0, token="tok", linger_s=60), store=store)
server.start(session, RollingHeatmap(HeatmapConfig()))
server.close()  # with a linger: returns at once, an exit handler keeps the page served
atexit.register(lambda: print("exiting", server.port, flush=True))  # runs before that handler
"""


def test_history_works_while_a_finished_session_lingers(tmp_path):
    """The program has returned and the interpreter is shutting down; the lingering page's history still works."""
    import signal

    from tests.conftest import REPO

    proc = subprocess.Popen([sys.executable, "-c", _LINGERING_MONITOR, str(tmp_path / "s.sqlite")], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("exiting"), proc.stderr.read() if proc.poll() is not None else line
        port = int(line.split()[1])
        time.sleep(0.3)
        url = f"http://127.0.0.1:{port}/api/history?patient=p1&days=3&token=tok"
        with urllib.request.urlopen(url, timeout=10) as res:
            assert res.status == 200 and json.loads(res.read())["patient"] == "p1"
        with urllib.request.urlopen(url, timeout=10) as res:  # and again: nothing was used up
            assert res.status == 200
        proc.send_signal(signal.SIGINT)  # Ctrl-C ends the linger
        _, err = proc.communicate(timeout=30)
        assert "cannot schedule new futures" not in err and "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_mark_times_are_bounded_by_the_session(make_server):
    """A mark far in the future (t = 1e308) froze every page that drew it: the server refuses it."""
    server = make_server()
    server.controls.session_time = 100.0

    async def main():
        ws, _, _ = await open_client(server)
        replies = []
        for t in (1e308, 100.0 + 3600, 2**60, int("9" * 400)):
            await ws.send(json.dumps({"type": "mark", "text": "far away", "t": t}))
            replies.append(await recv_type(ws, "error"))
        await ws.send(json.dumps({"type": "mark", "text": "just now", "t": 100.5, "id": "ok"}))
        ack = await recv_type(ws, "ack")
        late, _, snap = await open_client(server)
        await ws.close()
        await late.close()
        return replies, ack, snap

    replies, ack, snap = asyncio.run(main())
    assert [r["code"] for r in replies] == ["bad_field"] * 4
    assert ack["mark"]["t"] == 100.5
    assert [m["t"] for m in snap["marks"]] == [100.5] and [m.t for m in server.controls.marks] == [100.5]


def test_huge_integers_are_bad_fields_not_internal_errors(make_server, caplog):
    server = make_server()
    huge = "9" * 400

    async def main():
        ws, _, _ = await open_client(server)
        replies = []
        for raw in (f'{{"type": "ping", "t": {huge}}}', f'{{"type": "mark", "text": "x", "t": {huge}}}',
                    f'{{"type": "ping", "id": {huge}}}', f'{{"type": "ping", "t": -{huge}}}'):
            await ws.send(raw)
            replies.append(await recv_type(ws, "error"))
        await ws.close()
        return replies

    replies = asyncio.run(main())
    assert [r["code"] for r in replies] == ["bad_field"] * 4
    assert "Traceback" not in caplog.text and "handling a client message failed" not in caplog.text


def test_the_token_stays_out_of_request_logs(make_server, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="monitor.serve.server.websockets")  # as with -v
    server = make_server()
    assert http_get(server, f"/?token={TOKEN}")[0] == 200
    assert http_get(server, "/api/history?patient=x", {"Authorization": f"Bearer {TOKEN}"})[0] == 404

    async def main():
        ws, _, _ = await open_client(server)
        await ws.close()

    asyncio.run(main())
    server_lines = [r.getMessage() for r in caplog.records if r.name.startswith("monitor.")]  # not the test's client
    assert any("GET /" in line for line in server_lines)  # the request lines are logged at DEBUG ...
    assert not any(TOKEN in line for line in server_lines)  # ... without the token


def test_redact():
    from monitor.serve.server import redact

    assert redact("< GET /ws?token=abc-123&x=1 HTTP/1.1") == "< GET /ws?token=[redacted]&x=1 HTTP/1.1"
    assert redact("< Authorization: Bearer abc") == "< Authorization: [redacted]"
    assert redact("nothing secret") == "nothing secret"


# ---- protocol module and its documentation --------------------------------------------------------

def test_heatmap_encoding_round_trip():
    hm = RollingHeatmap(HeatmapConfig(bins=12, smoothing_sigma=1.0))
    for i, (v, a) in enumerate([(0.5, 0.5), (-0.7, 0.2), (0.1, -0.9)]):
        hm.add(v, a, t=float(i), duration=1.0 + i)
    snap = hm.snapshot()
    body = protocol.heatmap_body(snap, seq=1)
    assert len(base64.b64decode(body["data"])) == 144
    np.testing.assert_allclose(protocol.decode_heatmap(body), snap.grid, atol=snap.grid.max() / 255)
    empty = protocol.heatmap_body(RollingHeatmap(HeatmapConfig(bins=4)).snapshot(), seq=2)
    assert empty["max"] == 0.0 and not protocol.decode_heatmap(empty).any()


def test_live_summary_counts_quadrants_by_the_one_rule():
    from calibration.quadrants import quadrant

    s = protocol.SessionSummary()
    s.add(0.5, 0.5, 3.0)
    s.add(-0.5, -0.5, 1.0)
    s.add(0.05, 0.05, 0.0)  # a zero-length point: counted, weightless
    d = s.to_dict()
    assert quadrant(0.05, 0.05) == "neutral" and d["points"] == 3
    assert d["mean_valence"] == pytest.approx(0.25) and d["speech_seconds"] == 4.0
    assert d["quadrant_share"]["high_arousal_positive"] == 0.75 and sum(d["quadrant_share"].values()) == 1.0


def _doc_examples() -> dict[str, list[dict]]:
    text = DOCS.read_text(encoding="utf-8")
    examples: dict[str, list[dict]] = {}
    for block in re.findall(r"```json\n(.*?)```", text, re.S):
        msg = json.loads(block)
        examples.setdefault(msg["type"], []).append(msg)
    return examples


def test_every_message_is_documented_with_an_example_matching_the_server(make_server):
    """docs/protocol.md's examples must parse and carry exactly the fields the server sends."""
    examples = _doc_examples()
    server = make_server(heatmap_hz=20)
    seen: dict[str, dict] = {}

    async def main():
        ws = await connect(ws_url(server), open_timeout=10)
        for _ in range(2):
            msg = await recv_json(ws)
            seen[msg["type"]] = msg
        emit(server, make_point(0))
        seen["point"] = await recv_type(ws, "point")
        seen["heatmap"] = await recv_type(ws, "heatmap")
        server.status(Status(t=3.0, speech_active=True, paused=False, frame_queue=0, segment_queue=0,
                             result_queue=0, dropped_frames=0, failed_segments=0, segments=1, points=1, device="cpu"))
        seen["status"] = await recv_type(ws, "status")
        await ws.send(json.dumps({"type": "mark", "text": "x", "id": "m1"}))
        seen["ack"], seen["mark"] = await recv_types(ws, ("ack", "mark"))
        sent = seen["mark"]
        await ws.send(json.dumps({"type": "mark_edit", "id": "e1", "t": sent["t"], "wall_time": sent["wall_time"],
                                  "text": "y"}))
        _, seen["mark_update"] = await recv_types(ws, ("ack", "mark_update"))
        await ws.send(json.dumps({"type": "ping", "id": 1, "t": 0}))
        seen["pong"] = await recv_type(ws, "pong")
        await ws.send("{")
        seen["error"] = await recv_type(ws, "error")
        closer = asyncio.create_task(asyncio.to_thread(server.close))
        seen["end"] = await recv_type(ws, "end")
        await closer

    asyncio.run(main())
    for kind, msg in seen.items():
        assert kind in examples, f"docs/protocol.md has no example of {kind!r}"
        assert any(set(ex) == set(msg) for ex in examples[kind]), (kind, sorted(msg),
                                                                   [sorted(e) for e in examples[kind]])
    for kind in ("snapshot", "point", "heatmap", "status", "hello"):
        nested = [k for k, v in seen[kind].items() if isinstance(v, dict)]
        for key in nested:
            if seen[kind][key] and key not in ("probabilities",):
                assert any(set(ex.get(key) or {}) == set(seen[kind][key]) for ex in examples[kind]), (kind, key)
    for kind in protocol.CLIENT_TYPES:
        assert kind in examples, f"docs/protocol.md has no example of the client message {kind!r}"
        for ex in examples[kind]:
            if "text" in ex or kind != "mark":
                protocol.parse_client_message(json.dumps(ex))


def test_live_summary_agrees_with_the_history_aggregation():
    """The dashboard's live summary and monitor.history.aggregate's daily metrics must define tone the same way."""
    from monitor.history import aggregate

    rng = np.random.default_rng(3)
    v, a = rng.uniform(-1, 1, 300), rng.uniform(-1, 1, 300)
    v[:30], a[:30] = rng.uniform(-0.15, 0.15, 30), rng.uniform(-0.15, 0.15, 30)  # some near the centre
    d, c = rng.uniform(0.5, 6, 300), rng.uniform(0, 1, 300)
    live = protocol.SessionSummary()
    for row in zip(v, a, d, c, strict=True):
        live.add(*row)
    got = live.to_dict()
    w = aggregate.point_weights(d, c)
    assert got["mean_valence"] == pytest.approx(aggregate.weighted_mean_ci(v, w)["mean"], abs=1e-4)
    assert got["mean_arousal"] == pytest.approx(aggregate.weighted_mean_ci(a, w)["mean"], abs=1e-4)
    assert got["speech_seconds"] == pytest.approx(d.sum(), abs=1e-3)
    expected = aggregate.quadrant_shares(v, a, w, aggregate.AggregateConfig().neutral_radius)
    assert got["quadrant_share"] == pytest.approx(expected, abs=1e-4)


def test_odd_requests_get_plain_http_answers(make_server):
    """Requests a browser would never send still get an answer, never a server error."""
    server = make_server()

    def raw(request: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(request)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            return data

    two_hosts = raw(f"GET /?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n".encode())
    assert two_hosts.startswith(b"HTTP/1.1 200")  # the first Host counts
    assert raw(f"GET /?token={TOKEN} HTTP/1.1\r\n\r\n".encode()).startswith(b"HTTP/1.1 421")  # no Host at all
    assert raw(f"POST /?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()).split(b" ")[1] in (b"400", b"405")
    assert not raw(f"GET /{'x' * 9000} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()).startswith(b"HTTP/1.1 500")


# ---- the server's parts: lifecycle and thread bridge, without sockets ----------------------------------

def test_lifecycle_moves_only_along_its_table():
    from monitor.serve.lifecycle import TRANSITIONS, Lifecycle, Phase

    assert set(TRANSITIONS) == set(Phase) and TRANSITIONS[Phase.CLOSED] == frozenset()
    started = set(Phase) - {Phase.NEW, Phase.CLOSED}
    assert all(Phase.CLOSED in TRANSITIONS[p] for p in started)  # a started server can always stop
    life = Lifecycle()
    assert not life.advance(Phase.LIVE) and life.phase is Phase.NEW  # refused: nothing changes
    for phase in (Phase.STARTING, Phase.LIVE, Phase.ENDING, Phase.ENDED, Phase.SHUTTING_DOWN, Phase.CLOSED):
        assert life.advance(phase) and life.phase is phase
        assert not life.advance(phase)  # each step happens once: a second close() or shutdown is a no-op
    assert life.ended and not life.accepting and life.error is None


def test_lifecycle_properties_per_phase():
    from monitor.serve.lifecycle import Lifecycle, Phase

    life = Lifecycle()
    seen = {}
    for phase in (Phase.STARTING, Phase.LIVE, Phase.ENDED, Phase.SHUTTING_DOWN, Phase.CLOSED):  # no close(): via LIVE
        assert life.advance(phase)
        seen[phase] = (life.ended, life.accepting)
    assert seen == {Phase.STARTING: (False, True), Phase.LIVE: (False, True), Phase.ENDED: (True, True),
                    Phase.SHUTTING_DOWN: (True, False), Phase.CLOSED: (True, False)}


def test_lifecycle_reports_a_failed_start_to_the_waiting_thread():
    from monitor.serve.lifecycle import Lifecycle, Phase

    life = Lifecycle()
    assert life.advance(Phase.STARTING)
    assert not life.wait_started(0.05)  # still starting: the wait times out
    error = OSError("address already in use")
    threading.Timer(0.05, life.advance, (Phase.CLOSED, error)).start()
    assert life.wait_started(5) and life.phase is Phase.CLOSED and life.error is error
    assert not life.advance(Phase.LIVE)


class _RecordingLoop:
    """Stands in for the event loop: records the wake-ups the bridge asks for."""

    def __init__(self, closed: bool = False):
        self.calls: list = []
        self.closed = closed

    def call_soon_threadsafe(self, callback):
        if self.closed:
            raise RuntimeError("Event loop is closed")
        self.calls.append(callback)


def test_bridge_wakes_the_loop_once_per_burst_and_keeps_order():
    from monitor.serve.bridge import ThreadBridge

    got = []
    bridge = ThreadBridge(100, lambda kind, value: got.append((kind, value)))
    bridge.post("point", 0)  # no loop yet: ignored
    loop = _RecordingLoop()
    bridge.attach(loop)
    for i in range(1, 4):
        bridge.post("point", i)
    assert loop.calls == [bridge.drain]  # three events, one wake-up
    bridge.drain()
    bridge.post("mark", "m")
    assert len(loop.calls) == 2  # the next event asks again
    bridge.drain()
    assert got == [("point", 1), ("point", 2), ("point", 3), ("mark", "m")]
    bridge.detach()
    bridge.post("point", 9)
    bridge.drain()
    assert got[-1] == ("mark", "m") and not bridge.call(lambda: None)


def test_bridge_drops_and_counts_when_full_and_survives_a_bad_event(caplog):
    from monitor.serve.bridge import ThreadBridge

    got = []

    def deliver(kind, value):
        if value == 1:
            raise ValueError("bad point")
        got.append(value)

    bridge = ThreadBridge(3, deliver)
    bridge.attach(_RecordingLoop())
    for i in range(5):
        bridge.post("point", i)
    assert bridge.dropped == 2
    with caplog.at_level("ERROR", logger="monitor.serve.bridge"):
        bridge.drain()
    assert got == [0, 2] and any("could not forward a point" in r.getMessage() for r in caplog.records)
    closed = ThreadBridge(3, deliver)
    closed.attach(_RecordingLoop(closed=True))
    closed.post("point", 0)  # a stopped loop: no exception reaches the pipeline
    assert not closed.call(lambda: None)


# ---- lifecycle of a real server ---------------------------------------------------------------------------

def test_server_phases_from_start_to_close(make_server):
    from monitor.serve.lifecycle import Phase

    server = DashboardServer(ServerConfig(port=0, token=TOKEN))
    assert server.phase is Phase.NEW
    server.close()  # before start: nothing to do
    server.end_linger()
    assert server.phase is Phase.NEW
    server = make_server()
    assert server.phase is Phase.LIVE
    server.close()
    assert server.phase is Phase.CLOSED and not server._thread.is_alive()
    server.close()  # twice: harmless
    server.point(make_point(0))  # after the end: ignored, never an exception in the pipeline
    blocker = make_server()
    busy = DashboardServer(ServerConfig(port=blocker.port, token=TOKEN))
    with pytest.raises(RuntimeError, match="cannot serve"):
        busy.start(SESSION, RollingHeatmap(HeatmapConfig(bins=4)))
    assert busy.phase is Phase.CLOSED
    with pytest.raises(RuntimeError, match="cannot start"):
        busy.start(SESSION, RollingHeatmap(HeatmapConfig(bins=4)))


def test_stopping_without_close_still_ends_the_session_for_clients(make_server):
    """end_linger() on a live server (no close()): clients still get every point, ``end``, then 1001."""
    from monitor.serve.lifecycle import Phase

    server = make_server()

    async def main():
        ws, _, _ = await open_client(server)
        for i in range(5):
            emit(server, make_point(i))
        stopper = asyncio.create_task(asyncio.to_thread(server.end_linger))
        kinds = []
        with pytest.raises(ConnectionClosed) as info:
            while True:
                msg = await recv_json(ws)
                if msg["type"] in ("point", "end"):
                    kinds.append(msg["type"])
        await stopper
        return kinds, info.value.rcvd

    kinds, close_frame = asyncio.run(main())
    assert kinds == ["point"] * 5 + ["end"]
    assert close_frame.code == protocol.CLOSE_SESSION_ENDED and server.phase is Phase.CLOSED


# ---- the clinician's view: edit and delete a mark, end the session, the patient picker ---------------------

def test_a_mark_can_be_edited_and_deleted_by_any_viewer(make_server):
    server = make_server()

    async def main():
        ws = await connect(ws_url(server), open_timeout=10)
        other = await connect(ws_url(server), open_timeout=10)
        await recv_types(ws, ("hello", "snapshot"))
        await recv_types(other, ("hello", "snapshot"))
        await ws.send(json.dumps({"type": "mark", "text": "first", "id": "m1"}))
        _, mark = await recv_types(ws, ("ack", "mark"))
        key = {"t": mark["t"], "wall_time": mark["wall_time"]}
        await ws.send(json.dumps({"type": "mark_edit", "id": "e1", **key, "text": "  second  "}))
        ack, update = await recv_types(ws, ("ack", "mark_update"))
        assert ack["of"] == "mark_edit" and ack["mark"]["text"] == "first"
        assert update["mark"]["text"] == "second" and update["t"] == key["t"]
        assert (await recv_type(other, "mark_update"))["mark"]["text"] == "second"  # every viewer hears it
        late = await connect(ws_url(server), open_timeout=10)
        _, snap = await recv_types(late, ("hello", "snapshot"))
        assert [m["text"] for m in snap["marks"]] == ["second"]
        await ws.send(json.dumps({"type": "mark_delete", "id": "d1", **key}))
        ack, update = await recv_types(ws, ("ack", "mark_update"))
        assert ack["of"] == "mark_delete" and update["mark"] is None
        await ws.send(json.dumps({"type": "mark_delete", "id": "d2", **key}))
        err = await recv_type(ws, "error")
        assert err["code"] == "no_such_mark" and err["id"] == "d2"
        await ws.send(json.dumps({"type": "mark_edit", "id": "e3", "t": 1e308, "wall_time": 1, "text": "x"}))
        assert (await recv_type(ws, "error"))["code"] == "bad_field"
        late2 = await connect(ws_url(server), open_timeout=10)
        _, snap = await recv_types(late2, ("hello", "snapshot"))
        assert snap["marks"] == []
        for c in (ws, other, late, late2):
            await c.close()

    asyncio.run(main())


def test_end_session_from_the_page_stops_the_pipeline(make_server):
    server = make_server()

    async def main():
        ws = await connect(ws_url(server), open_timeout=10)
        await recv_types(ws, ("hello", "snapshot"))
        await ws.send(json.dumps({"type": "end_session", "id": "x"}))
        ack = await recv_type(ws, "ack")
        assert ack == {"type": "ack", "id": "x", "of": "end_session"}
        await ws.close()

    asyncio.run(main())
    assert server.controls.stopped


def test_the_patient_list_is_token_protected_and_from_the_store(make_server, tmp_path):
    from monitor.history.store import Store

    with Store.open(tmp_path / "m.sqlite") as store:
        for pid in ("p-2", "p-1"):
            store.begin_session(SessionInfo(session_id=f"s-{pid}", started_at=1767225600.0, model_id="m",
                                            model_version="v", device="cpu", labels=("a",), source="t",
                                            patient_id=pid))
        server = make_server(store=store)
        status, _, body = http_get(server, f"/api/patients?token={TOKEN}")
        assert status == 200
        data = json.loads(body)
        assert [p["patient_id"] for p in data["patients"]] == ["p-1", "p-2"] and data["patients"][0]["sessions"] == 1
        assert http_get(server, "/api/patients")[0] == 403
        assert http_get(server, "/api/patients?token=wrong")[0] == 403
    assert http_get(make_server(), f"/api/patients?token={TOKEN}")[0] == 404  # no store
