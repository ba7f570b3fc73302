"""The clinic's server: rooms stream audio in (thin client, browser), many sessions, access per clinician.

The end-to-end test runs ``mood-monitor serve`` as a process with three concurrent rooms: two thin clients
(``mood-monitor --remote``) replaying the same real corpus recording, one of them through a TCP relay that
the test cuts mid-stream, and headless Chromium whose fake microphone plays a corpus clip. Each session must
reach its own dashboard channel and its own patient's store rows, and the interrupted room must lose no
audio: its session covers the whole recording and gives the same points as the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from monitor.audio.pushed import PushedAudioSource
from monitor.serve import rooms
from monitor.serve.access import AccessConfigError, ClinicAccess, Clinician, hash_token
from monitor.serve.protocol import ProtocolError

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("MOOD_MONITOR_CHROMIUM", "/usr/bin/chromium")


# ---- the wire format and its checks -----------------------------------------------------------
def test_audio_chunks_round_trip_and_malformed_ones_are_refused():
    pcm = (np.arange(1600) - 800).astype(np.int16)
    seq, back = rooms.decode_chunk(rooms.encode_chunk(7, pcm))
    assert seq == 7 and np.array_equal(back, pcm)
    too_long = rooms.encode_chunk(0, np.zeros(rooms.MAX_CHUNK_SAMPLES + 1))
    for bad in (b"", b"\x00\x00\x00", b"\x00\x00\x00\x00\x01", too_long):
        with pytest.raises(ProtocolError):
            rooms.decode_chunk(bad)


@pytest.mark.parametrize("raw, code", [
    (b"\x00\x00", "bad_message"),
    ("not json", "bad_json"),
    (json.dumps({"type": "mark"}), "bad_message"),
    (json.dumps({"type": "room_hello"}), "bad_field"),
    (json.dumps({"type": "room_hello", "patient": "P1", "version": 9}), "bad_version"),
    (json.dumps({"type": "room_hello", "patient": "P1", "sample_rate": 48000}), "bad_field"),
    (json.dumps({"type": "room_hello", "patient": "P1", "format": "opus"}), "bad_field"),
    (json.dumps({"type": "room_hello", "patient": "x" * 200}), "bad_field"),
    (json.dumps({"type": "room_hello", "patient": "P1", "session": 5}), "bad_field"),
])
def test_a_bad_room_hello_is_a_clear_protocol_error(raw, code):
    with pytest.raises(ProtocolError) as info:
        rooms.parse_room_hello(raw)
    assert info.value.code == code


def test_access_file_gives_each_clinician_their_patients(tmp_path):
    path = tmp_path / "access.json"
    path.write_text(json.dumps({"clinicians": [
        {"id": "dr-a", "token_sha256": hash_token("tok-a"), "patients": ["P1"]},
        {"id": "all", "token_sha256": hash_token("tok-all"), "patients": ["*"]}]}))
    access = ClinicAccess.from_file(path)
    a, everyone = access.who("tok-a"), access.who("tok-all")
    assert a is not None and a.id == "dr-a" and a.may_see("P1") and not a.may_see("P2") and not a.may_see(None)
    assert everyone is not None and everyone.may_see("P2") and everyone.may_see(None)
    assert access.who("tok-b") is None and access.who("") is None and access.who(None) is None
    for bad in ({"clinicians": []}, {"clinicians": [{"id": "x", "token_sha256": "plain", "patients": ["*"]}]},
                {"clinicians": [{"id": "x", "token_sha256": hash_token("t"), "patients": "P1"}]}, []):
        path.write_text(json.dumps(bad))
        with pytest.raises(AccessConfigError):
            ClinicAccess.from_file(path)


def test_pushed_audio_holds_the_room_back_instead_of_dropping_and_keeps_one_timeline():
    source = PushedAudioSource(queue_seconds=0.25)  # 4000 samples
    chunk = np.full(1600, 1000, dtype=np.int16)
    assert source.offer(chunk) and source.offer(chunk)
    assert not source.offer(chunk)  # full: the server stops reading the room's socket until there is room
    frames = source.frames()
    first = next(frames)  # the segmenter took the first chunk: there is room again
    assert first.t_start == 0.0
    assert source.offer(chunk)
    source.end()
    rest = list(frames)
    assert len(rest) == 9 and sum(len(f.samples) for f in rest) + len(first.samples) == 3 * 1600  # 10 frames of 30 ms
    assert [f.t_start for f in rest] == pytest.approx([0.03 * i for i in range(1, 10)])  # one timeline, no gap
    with pytest.raises(Exception, match="ended"):
        source.offer(chunk)
    assert source.received_seconds == pytest.approx(3 * 1600 / 16000)


def test_a_clinic_server_off_this_computer_requires_tls():
    from monitor.serve.clinic import ClinicServer
    from monitor.serve.config import ServerConfig

    with pytest.raises(ValueError, match="TLS"):
        ClinicServer(lambda *a: None, ServerConfig(host="0.0.0.0"))  # type: ignore[arg-type, return-value]


# ---- the whole clinic, as processes ------------------------------------------------------------
class Relay:
    """A TCP relay between a room and the server that the test can cut, as a network would."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # the server is gone: so is this connection
                client.close()
                continue
            with self.lock:
                self.pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> int:
        """Drop every connection through the relay at once (new ones still pass)."""
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for s in pair:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
                s.close()
        return len(pairs)


@pytest.fixture(scope="module")
def room_recording(ravdess_dir, tmp_path_factory) -> Path:
    """Six clips of two actors with short pauses (~26 s), what a room replays."""
    import soundfile as sf

    parts, rate = [], None
    for actor, code in (("01", "03"), ("01", "04"), ("02", "05"), ("02", "06"), ("01", "05"), ("02", "03")):
        path = ravdess_dir / f"Actor_{actor}" / f"03-01-{code}-02-01-01-{actor}.wav"
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
        rate = rate or sr
        assert sr == rate
        parts += [audio.mean(axis=1), np.zeros(sr // 2, dtype=np.float32)]
    out = tmp_path_factory.mktemp("clinic_audio") / "room.wav"
    sf.write(out, np.concatenate(parts), rate, subtype="PCM_16")
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dashboard_points(url: str, token: str, session: str, want: int, timeout: float = 120.0) -> list[dict]:
    """Points a dashboard connection to one session receives (snapshot included), until ``want`` or ``end``."""
    from websockets.sync.client import connect

    points: list[dict] = []
    ws_url = url.replace("http://", "ws://", 1)
    with connect(f"{ws_url}/ws?token={token}&session={session}", open_timeout=10) as ws:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(points) < want:
            try:
                msg = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            except TimeoutError:
                break
            if msg["type"] == "snapshot":
                points += msg["points"]
            elif msg["type"] == "point":
                points.append(msg)
            elif msg["type"] == "end":
                break
    return points


def _sessions(url: str, token: str) -> list[dict]:
    import urllib.request

    with urllib.request.urlopen(f"{url}/api/sessions?token={token}", timeout=10) as r:  # noqa: S310 - loopback
        return list(json.loads(r.read())["sessions"])


@pytest.mark.slow
@pytest.mark.browser
def test_three_rooms_stream_to_one_server_and_a_cut_connection_loses_no_audio(room_recording, tiny_bundle, tmp_path,
                                                                             ravdess_dir):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (install Debian's chromium or set MOOD_MONITOR_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    from monitor.history.store import Store

    db, port = tmp_path / "clinic.sqlite", _free_port()
    access = tmp_path / "access.json"
    access.write_text(json.dumps({"clinicians": [
        {"id": "dr-a", "token_sha256": hash_token("tok-a"), "patients": ["P-A", "P-B", "P-WEB"]},
        {"id": "dr-c", "token_sha256": hash_token("tok-c"), "patients": ["P-C"]}]}))
    server = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "serve", "--port", str(port), "--db", str(db), "--access", str(access),
         "--model", str(tiny_bundle), "--resume-grace", "60"],
        cwd=REPO, stderr=subprocess.PIPE, text=True)
    log_lines: list[str] = []
    threading.Thread(target=lambda: log_lines.extend(iter(server.stderr.readline, "")), daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not any("clinic server:" in line for line in log_lines):
            assert server.poll() is None and time.monotonic() < deadline, "".join(log_lines)
            time.sleep(0.2)
        relay = Relay(port)

        def room(patient: str, via: int) -> subprocess.Popen[str]:
            return subprocess.Popen(
                [sys.executable, "-m", "monitor.cli", "--remote", f"ws://127.0.0.1:{via}", "--token", "tok-a",
                 "--patient", patient, "--room", f"room-{patient}", "--input", str(room_recording)],
                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        steady, cut = room("P-B", port), room("P-A", relay.port)
        # The browser room: Chromium's fake microphone plays a corpus clip (looped) into the page.
        clip = tmp_path / "mic.wav"
        import soundfile as sf

        audio, sr = sf.read(ravdess_dir / "Actor_03" / "03-01-05-02-01-01-03.wav", dtype="int16")
        sf.write(clip, np.concatenate([audio, np.zeros(sr // 2, dtype=np.int16)]), sr, subtype="PCM_16")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={clip}",
                "--autoplay-policy=no-user-gesture-required"])
            page = browser.new_page()
            page.on("dialog", lambda d: d.accept())
            page.goto(f"{url}/?token=tok-a&capture=1&patient=P-WEB&room=web")
            page.click("#capture-btn")
            time.sleep(8)  # all three rooms are streaming now
            assert relay.cut() >= 1, "the relayed room was not connected"
            sessions = {s["patient_id"]: s for s in _sessions(url, "tok-a")}
            assert set(sessions) == {"P-A", "P-B", "P-WEB"}, sessions
            assert _sessions(url, "tok-c") == []  # another clinician sees none of them
            web = sessions["P-WEB"]["session_id"]
            got_web = _dashboard_points(url, "tok-a", web, want=3, timeout=90)
            assert len(got_web) >= 3, "the browser room's session reached no dashboard"
            page.click("#end-btn")
            page.wait_for_function("() => document.querySelector('#conn').dataset.state === 'ended'", timeout=60000)
            browser.close()
        outputs = {}
        for name, proc in (("steady", steady), ("cut", cut)):
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, err
            outputs[name] = (out, err)
        assert "resumed session" in outputs["cut"][1] and "1 reconnects" in outputs["cut"][1], outputs["cut"][1]
        assert "0 reconnects" in outputs["steady"][1]
        printed = [json.loads(line) for line in outputs["steady"][0].splitlines() if line.startswith("{")]
        assert len(printed) >= 5  # the thin client prints the points the server sends back
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    text = "".join(log_lines)
    assert re.search(r"session \S+: the room resumed at chunk [1-9]", text), text
    store = Store.open(db)
    rows = {r.patient_id: r for r in store.sessions()}
    assert set(rows) == {"P-A", "P-B", "P-WEB"}
    duration = sf.info(room_recording).duration
    # No audio lost or doubled across the cut: the session covers the recording exactly, as the steady one does.
    assert rows["P-A"].audio_seconds == pytest.approx(rows["P-B"].audio_seconds, abs=0.031)
    assert rows["P-A"].audio_seconds == pytest.approx(duration, abs=0.031)
    a, b = store.points([rows["P-A"].session_id]), store.points([rows["P-B"].session_id])
    assert len(a) == len(b) >= 5
    assert np.allclose(a.valence, b.valence, atol=1e-3) and np.allclose(a.arousal, b.arousal, atol=1e-3)
    assert np.allclose(a.t_start, b.t_start)
    assert rows["P-WEB"].points >= 3


# ---- the room protocol against a running server, in process ---------------------------------------
@pytest.fixture
def clinic(tiny_bundle, target):
    """A clinic server on a free port with the tiny model, two clinicians, and its store on SQLite or on a real
    PostgreSQL server (the clinic's usual store)."""
    from monitor.history.store import Store
    from monitor.serve.clinic import ClinicConfig, ClinicServer
    from monitor.serve.config import ServerConfig
    from monitor.serve_command import RoomSessionFactory, build_parser, load_clinic_model

    db = target
    args = build_parser().parse_args(["--port", "0", "--db", str(db), "--model", str(tiny_bundle)])
    access = ClinicAccess([Clinician("dr-a", hash_token("tok-a"), frozenset({"P1"})),
                           Clinician("dr-b", hash_token("tok-b"), frozenset({"P2"}))])
    shared = load_clinic_model(args)
    store = Store.open(db)
    server = ClinicServer(RoomSessionFactory(shared, store, args), ServerConfig(port=0),
                          ClinicConfig(resume_grace_s=30), access=access, store=store)
    server.start()
    try:
        yield server, store
    finally:
        server.stop()
        shared.close()
        store.close()


def _doc_examples() -> dict[str, dict]:
    text = (REPO / "docs" / "protocol.md").read_text(encoding="utf-8")
    return {m["type"]: m for m in (json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, re.S))}


def test_the_room_protocol_as_documented(clinic, ravdess_clips):
    import soundfile as sf
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    server, store = clinic
    url = server.url.replace("http://", "ws://")
    docs = _doc_examples()
    audio, sr = sf.read(ravdess_clips[4], dtype="int16")
    assert sr == 16000

    def next_of(ws, kind: str) -> dict:
        while True:
            msg = json.loads(ws.recv(timeout=30))
            if msg["type"] == kind:
                return msg
            assert msg["type"] in ("hello", "snapshot", "status", "heatmap", "point", "end"), msg

    with connect(f"{url}/room?token=tok-b") as ws:  # dr-b may not stream for P1
        ws.send(json.dumps({"type": "room_hello", "patient": "P1"}))
        assert json.loads(ws.recv(timeout=10))["code"] == "forbidden"
    with pytest.raises(InvalidStatus):
        connect(f"{url}/room?token=nope").close()

    with connect(f"{url}/room?token=tok-a") as ws:
        ws.send(json.dumps(docs["room_hello"] | {"patient": "P1"}))
        ready = next_of(ws, "room_ready")
        assert set(ready) == set(docs["room_ready"]) and ready["next_seq"] == 0 and not ready["resumed"]
        session = ready["session"]
        chunks = [audio[i:i + 1600] for i in range(0, len(audio), 1600)]
        half = len(chunks) // 2
        for seq in range(half):
            ws.send(rooms.encode_chunk(seq, chunks[seq]))
            ack = next_of(ws, "audio_ack")
            assert set(ack) == set(docs["audio_ack"]) and ack["seq"] == seq and ack["next_seq"] == seq + 1
        ws.send(rooms.encode_chunk(half + 3, chunks[half]))
        assert next_of(ws, "error")["code"] == "audio_gap"
        ws.send(b"\x01\x02\x03")
        assert next_of(ws, "error")["code"] == "bad_audio"
        # the other clinician sees neither the session nor its dashboard
        with pytest.raises(InvalidStatus) as refused:
            connect(f"{url}/ws?token=tok-b&session={session}").close()
        assert refused.value.response.status_code == 404
    # the connection dropped half way; the room resumes and re-sends from next_seq
    with connect(f"{url}/room?token=tok-a") as ws:
        ws.send(json.dumps({"type": "room_hello", "patient": "P1", "session": session}))
        ready = next_of(ws, "room_ready")
        assert ready["resumed"] and ready["next_seq"] == half and ready["session"] == session
        ws.send(rooms.encode_chunk(half - 1, chunks[half - 1]))  # a duplicate: acknowledged, not taken twice
        assert next_of(ws, "audio_ack")["next_seq"] == half
        for seq in range(half, len(chunks)):
            ws.send(rooms.encode_chunk(seq, chunks[seq]))
            next_of(ws, "audio_ack")
        ws.send(json.dumps(docs["room_end"]))
        ended = next_of(ws, "room_ended")
    assert set(ended) == set(docs["room_ended"]) and ended["error"] is None
    # a room whose room_end crossed a dropped connection asks to resume: it is told how the session ended
    with connect(f"{url}/room?token=tok-a") as ws:
        ws.send(json.dumps({"type": "room_hello", "patient": "P1", "session": session}))
        assert json.loads(ws.recv(timeout=10)) == ended
    summary = ended["summary"]
    assert summary["audio_seconds"] == pytest.approx(len(audio) / sr, abs=0.031) and summary["points"] >= 1
    assert server.stats["duplicate_chunks"] == 1 and server.stats["resumes"] == 1
    row = store.session(session)
    assert row is not None and row.patient_id == "P1" and row.points == summary["points"]
