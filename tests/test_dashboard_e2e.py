"""End to end: run_monitor.py replays real RAVDESS speech; headless Chromium shows it live.

Asserts what a therapist relies on: points appear, the heat map changes, a mark
typed in the page goes through the pipeline (it lands in the JSONL output) and
back to the page, a dropped connection resyncs from the snapshot (including a
point it missed while offline), the page ends in exactly the pipeline's state,
the layout fits a tablet, and the browser logs no errors. Saves screenshots
(to MOOD_MONITOR_SCREENSHOT as well, when set, to refresh docs/dashboard.png;
MOOD_MONITOR_E2E_MODEL=monitor/model/bundles/whisper runs it on the shipped default model).

Needs Debian's chromium (or MOOD_MONITOR_CHROMIUM) and the playwright Python
package; the monitor takes ~20 s to start (model and numba imports).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("MOOD_MONITOR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "e2e-token"
#: RAVDESS emotion codes (3rd field of the file name): happy, sad, angry, fearful.
EMOTIONS = ("03", "04", "05", "06")


@pytest.fixture(scope="module")
def playwright_api():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (install Debian's chromium or set MOOD_MONITOR_CHROMIUM)")
    from playwright import sync_api  # a test dependency: a broken install must fail, not skip

    with sync_api.sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def session_wav(ravdess_dir, tmp_path_factory) -> Path:
    """2 s of silence (the browser connects), then four strong-intensity clips of one actor, 0.4 s apart (~17 s)."""
    import soundfile as sf

    parts, rate = [], None
    for code in EMOTIONS:
        path = ravdess_dir / "Actor_01" / f"03-01-{code}-02-01-01-01.wav"
        if not path.exists():
            pytest.skip(f"RAVDESS clip {path.name} is missing")
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
        rate = rate or sr
        assert sr == rate
        parts += [audio.mean(axis=1), np.zeros(int(0.4 * sr), dtype=np.float32)]
    parts.insert(0, np.zeros(2 * rate, dtype=np.float32))
    out = tmp_path_factory.mktemp("e2e_audio") / "session.wav"
    sf.write(out, np.concatenate(parts), rate, subtype="PCM_16")
    return out


class Monitor:
    """run_monitor.py as a subprocess: its printed dashboard address, its stderr, its JSONL output."""

    def __init__(self, wav: Path, bundle: Path, jsonl: Path):
        self.jsonl = jsonl
        cmd = [sys.executable, str(REPO / "run_monitor.py"), "--input", str(wav), "--model", str(bundle),
               "--no-store", "--port", "0", "--token", TOKEN, "--linger", "120", "--max-segment", "1.5",
               "--jsonl", str(jsonl)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: list[str] = []
        self.url: str | None = None
        self._found = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            match = re.match(r"^dashboard: (https?://\S+)$", line.strip())
            if match:
                self.url = match.group(1)
                self._found.set()
        self._found.set()

    def wait_url(self, timeout: float = 180.0) -> str:
        self._found.wait(timeout)
        if self.url is None:
            raise AssertionError("the monitor printed no dashboard address:\n" + "\n".join(self.lines[-30:]))
        return self.url

    def records(self, kind: str) -> list[dict]:
        if not self.jsonl.exists():
            return []
        out = []
        for line in self.jsonl.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                if record["type"] == kind:
                    out.append(record)
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # Ctrl-C: ends the linger
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def wait_until(page, js: str, timeout: float = 30.0, what: str = ""):
    """Poll a JavaScript expression (page.wait_for_function would need 'unsafe-eval', which the page's CSP forbids)."""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(js)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or js}")
        time.sleep(0.1)


HEAT_SIGNATURE = """() => {
  const c = document.getElementById('heat-layer');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let lit = 0, sum = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] > 0) { lit++; sum += d[i] * 3 + d[i + 1] * 5 + d[i + 2] * 7 + d[i + 3]; }
  }
  return [lit, sum];
}"""

CANVAS_LIT = """(id) => {
  const c = document.getElementById(id);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let lit = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] > 0) lit++;
  return lit;
}"""


def test_live_dashboard_end_to_end(playwright_api, session_wav, tiny_bundle, tmp_path):
    # MOOD_MONITOR_E2E_MODEL: another bundle (e.g. monitor/model/bundles/whisper, for the docs screenshot)
    bundle = Path(os.environ.get("MOOD_MONITOR_E2E_MODEL") or tiny_bundle)
    monitor = Monitor(session_wav, bundle, tmp_path / "points.jsonl")
    browser = None
    problems: list[str] = []
    try:
        # The browser starts while the monitor loads its model, so the page is there when speech begins.
        browser = playwright_api.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1366, "height": 900}, device_scale_factor=1)
        page = context.new_page()
        page.on("console", lambda m: problems.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        url = monitor.wait_url()
        assert re.fullmatch(rf"http://127\.0\.0\.1:\d+/\?token={TOKEN}", url)
        page.goto(url)

        # Connected, and the hello is shown.
        wait_until(page, "document.getElementById('conn').dataset.state === 'live'", 20, "a live connection")
        from monitor.model.bundle import load_bundle

        assert load_bundle(bundle).model_id in page.inner_text("#session-info")
        # No enrolment for this run: the header says plainly that placement is uncalibrated.
        assert page.inner_text("#calibration").startswith("Uncalibrated")
        assert page.is_visible("#confidence-legend")

        # Points appear; the heat map is drawn and changes as more speech arrives.
        wait_until(page, "moodDashboard.state.points.length >= 1", 90, "the first point")
        wait_until(page, "moodDashboard.state.heat && moodDashboard.state.heat.points >= 1", 10, "a heat map")
        first = wait_until(page, f"(() => {{ const s = ({HEAT_SIGNATURE})(); return s[0] > 0 ? s : null; }})()",
                           5, "heat map pixels")
        wait_until(page, "moodDashboard.state.points.length >= 2", 60, "a second point")
        assert page.inner_text("#sum-points") != "0"
        assert page.inner_text("#latest").startswith("Latest")

        # A mark typed in the page goes through the pipeline and comes back.
        page.fill("#mark-text", "e2e: patient sighs")
        page.press("#mark-text", "Enter")
        wait_until(page, "document.getElementById('marks').innerText.includes('e2e: patient sighs')", 10,
                   "the mark in the list")
        assert page.inner_text("#notice").startswith("Marked at")
        assert page.input_value("#mark-text") == ""

        # Drop the connection and hold it down until the pipeline has produced a point the page missed.
        seen = page.evaluate("moodDashboard.state.points.length")
        page.evaluate("moodDashboard.simulateDrop(120000)")
        wait_until(page, "document.getElementById('conn').dataset.state === 'reconnecting'", 5, "the drop")
        deadline = time.monotonic() + 60
        while len(monitor.records("point")) <= seen:
            assert time.monotonic() < deadline, "no new point while the page was offline"
            time.sleep(0.1)
        assert page.evaluate("moodDashboard.state.points.length") == seen  # it really missed it
        page.evaluate("moodDashboard.allowReconnect()")
        wait_until(page, "document.getElementById('conn').dataset.state === 'live' "
                         "&& moodDashboard.stats.snapshots === 2", 15, "the reconnect")
        missed = monitor.records("point")
        page_indices = page.evaluate("moodDashboard.state.points.map(p => p.index)")
        assert page_indices[: len(missed)] == [r["index"] for r in missed]  # resynced, missed point included
        assert "e2e: patient sighs" in page.inner_text("#marks")  # marks come back with the snapshot

        # Heat map changed since the first frame.
        wait_until(page, f"(() => {{ const s = ({HEAT_SIGNATURE})(); "
                         f"return s[0] > 0 && (s[0] !== {first[0]} || s[1] !== {first[1]}); }})()", 10,
                   "the heat map to change")

        # Let the replay finish: the page ends in exactly the pipeline's state.
        wait_until(page, "moodDashboard.state.ended", 90, "the end of the session")
        points = monitor.records("point")
        page_points = page.evaluate("moodDashboard.state.points")
        assert [p["index"] for p in page_points] == [r["index"] for r in points]
        np.testing.assert_allclose([p["valence"] for p in page_points], [r["valence"] for r in points], atol=1e-3)
        np.testing.assert_allclose([p["arousal"] for p in page_points], [r["arousal"] for r in points], atol=1e-3)
        assert int(page.inner_text("#sum-points")) == len(points) >= 4
        marks = monitor.records("mark")
        assert [(m["text"], m["source"]) for m in marks] == [("e2e: patient sighs", "dashboard")]
        assert page.evaluate(CANVAS_LIT, "tl-valence") > 0 and page.evaluate(CANVAS_LIT, "tl-arousal") > 0
        assert page.inner_text("#conn") == "session ended"
        assert page.evaluate("document.querySelectorAll('#marks .mark-edit-btn').length") == 0  # no edits after it
        time.sleep(0.5)  # a last animation frame
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        if os.environ.get("MOOD_MONITOR_SCREENSHOT"):
            page.screenshot(path=os.environ["MOOD_MONITOR_SCREENSHOT"], full_page=True)

        # A tablet in portrait: one column, nothing wider than the screen.
        page.set_viewport_size({"width": 820, "height": 1180})
        time.sleep(0.5)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        box = page.locator("#circumplex").bounding_box()
        assert box["width"] >= 500 and abs(box["width"] - box["height"]) < 2
        page.screenshot(path=str(tmp_path / "dashboard-tablet.png"), full_page=True)

        # History needs a store; with --no-store the view says so without a failing request.
        page.click("#tab-history")
        assert "no store" in page.inner_text("#history-msg")
        page.click("#tab-live")

        # A second browser tab opened after the session still gets the whole picture from the snapshot.
        late = context.new_page()
        late.on("console", lambda m: problems.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        late.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        late.goto(url)
        wait_until(late, f"moodDashboard.state.points.length === {len(points)}", 10, "the late tab's snapshot")
        assert "e2e: patient sighs" in late.inner_text("#marks")
        assert late.inner_text("#conn") == "session ended"

        assert problems == [], problems
    finally:
        if browser is not None:
            browser.close()
        code = monitor.stop()
    assert code == 0, "\n".join(monitor.lines[-30:])
    assert any(line.startswith("session ") for line in monitor.lines)  # the summary was printed


def test_history_view(playwright_api, tmp_path):
    """The History tab draws a patient's real aggregated history.

    A temporary store, monitor.history.aggregate and the endpoint, all real.
    """
    from monitor.history import store as store_mod
    from monitor.live.events import Point, SessionInfo
    from monitor.live.heatmap import RollingHeatmap
    from monitor.serve.server import DashboardServer, ServerConfig

    def info(sid: str, started: float) -> SessionInfo:
        return SessionInfo(session_id=sid, started_at=started, model_id="m@1", model_version="1", device="cpu",
                           labels=("neutral",), source="test", patient_id="p-42")

    store = store_mod.Store.open(tmp_path / "history.sqlite")
    now = time.time()
    rng = np.random.default_rng(0)
    days_with_sessions = [k for k in range(13, -1, -1) if k % 4 != 3]  # 11 of the last 14 days
    for n, k in enumerate(days_with_sessions):
        started = now - k * 86400 - 3600
        centre = np.array([-0.6 + 1.2 * n / len(days_with_sessions), 0.5 * np.sin(n)])
        points, t = [], 0.0
        for i in range(40 + 5 * n):
            v, a = np.clip(centre + rng.normal(0, 0.15, 2), -1, 1)
            points.append(Point(i, t, t + 2.0, float(v), float(a), 0.8, {}, 50.0, started + t + 2.0))
            t += 3.0
        store.begin_session(info(f"s{n}", started))
        store.add_points(f"s{n}", points)
        store.end_session(f"s{n}", started + t)

    server = DashboardServer(ServerConfig(port=0, token=TOKEN), store=store)
    server.start(info("live", now), RollingHeatmap())
    browser = None
    problems: list[str] = []
    try:
        browser = playwright_api.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: problems.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.goto(server.url)
        wait_until(page, "document.getElementById('conn').dataset.state === 'live'", 20, "a live connection")
        page.click("#tab-history")  # the running session's patient is filled in and loaded
        wait_until(page, "document.querySelectorAll('#history-grid .day').length === 14", 20, "14 small multiples")
        assert page.input_value("#history-patient") == "p-42"
        assert "11 of 14 days with speech, 11 sessions" in page.inner_text("#history-msg")
        assert page.evaluate("document.querySelectorAll('#history-grid .day[data-empty=\"true\"]').length") == 3
        assert page.evaluate("document.querySelectorAll('#history-sessions tbody tr').length") == 11
        assert "–" not in page.inner_text("#history-sessions tbody tr:first-child")  # dates and lengths parsed
        assert page.inner_text("#history-sessions tbody tr:first-child td:last-child") == "uncalibrated"
        for canvas in ("trend-valence", "trend-arousal"):
            assert page.evaluate(CANVAS_LIT, canvas) > 0
        lit = page.evaluate("""() => [...document.querySelectorAll('#history-grid canvas')].map(c => {
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 0; i < d.length; i += 4) {  // colourful (viridis) pixels; the frame is grey
              const hi = Math.max(d[i], d[i + 1], d[i + 2]), lo = Math.min(d[i], d[i + 1], d[i + 2]);
              if (d[i + 3] > 100 && hi - lo > 40) n++; }
            return n; })""")
        empty = page.evaluate("[...document.querySelectorAll('#history-grid .day')].map(d => d.dataset.empty)")
        # heat maps on speech days only
        assert all((n > 0) == (e == "false") for n, e in zip(lit, empty, strict=False)), (lit, empty)
        page.select_option("#history-days", "30")
        page.click("#history-form button[type=submit]")
        wait_until(page, "document.querySelectorAll('#history-grid .day').length === 30", 20, "30 small multiples")
        # The patient picker lists the store's patients (a new one appears when the list is reloaded).
        options = page.evaluate("[...document.querySelectorAll('#history-patient option')].map(o => o.value)")
        assert options == ["", "p-42"], options
        store.begin_session(SessionInfo(session_id="other", started_at=now, model_id="m@1", model_version="1",
                                        device="cpu", labels=("neutral",), source="test", patient_id="p-07"))
        page.click("#tab-live")
        page.click("#tab-history")
        wait_until(page, "document.querySelectorAll('#history-patient option').length === 3", 10, "the new patient")
        page.select_option("#history-patient", "p-07")  # choosing a patient loads their history
        wait_until(page, "document.getElementById('history-msg').innerText.includes('0 of 30 days')", 20,
                   "the other patient's (empty) history")
        assert page.input_value("#history-patient") == "p-07"
        page.screenshot(path=str(tmp_path / "history.png"), full_page=True)
        assert problems == [], problems
    finally:
        if browser is not None:
            browser.close()
        server.close()
        store.close()


def test_an_absurd_mark_time_cannot_freeze_the_page(playwright_api):
    """A mark at t = 1e308 (from before the server bounded marks) made drawTimelines loop forever, for every viewer.

    The mark is handed to the server the way the pipeline hands marks on, so it reaches the page in the
    snapshot and live; the page must keep drawing, and the token must have left the address bar.
    """
    from monitor.live.events import Mark, Point, SessionInfo, Status
    from monitor.live.heatmap import RollingHeatmap
    from monitor.serve.server import DashboardServer, ServerConfig

    session = SessionInfo(session_id="s-absurd", started_at=time.time(), model_id="m@1", model_version="1",
                          device="cpu", labels=("neutral",), source="test")
    server = DashboardServer(ServerConfig(port=0, token=TOKEN))
    server.start(session, RollingHeatmap())
    server.point(Point(0, 1.0, 3.0, 0.2, 0.1, 0.9, {"neutral": 0.9}, 40.0))
    server.status(Status(t=12.0, speech_active=False, paused=False, frame_queue=0, segment_queue=0, result_queue=0,
                         dropped_frames=0, failed_segments=0, segments=1, points=1, device="cpu"))
    server.mark(Mark(t=1e308, text="far future", source="test"))
    browser = None
    problems: list[str] = []
    try:
        browser = playwright_api.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(15_000)  # a page stuck in a loop never answers evaluate()
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.goto(server.url)
        wait_until(page, "document.getElementById('conn').dataset.state === 'live'", 20, "a live connection")
        server.mark(Mark(t=2e308 / 2, text="another one, live", source="test"))
        server.mark(Mark(t=5.0, text="a real mark", source="test"))
        wait_until(page, "window.moodDashboard.state.marks.length >= 2", 10, "the live marks")
        assert page.evaluate("1 + 1") == 2  # the page still runs its event loop
        assert page.evaluate("window.moodDashboard.state.points.length") == 1
        assert page.evaluate(CANVAS_LIT, "tl-valence") > 0
        assert "token" not in page.evaluate("location.href")  # read once, then out of the address bar
        assert problems == [], problems
    finally:
        if browser is not None:
            browser.close()
        server.close()


class _Controls:
    """Stands in for the pipeline (as in tests/test_server_protocol.py): marks, edits and the end go to the server."""

    def __init__(self) -> None:
        self.server = None
        self.paused = False
        self.session_time = 30.0
        self.marks: list = []
        self.stopped = False

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def add_mark(self, text, t=None, source="dashboard"):
        from monitor.live.events import Mark

        mark = Mark(t=self.session_time if t is None else float(t), text=str(text), source=source)
        self.marks.append(mark)
        self.server.mark(mark)
        return mark

    def edit_mark(self, t, wall_time, text):
        from monitor.live.events import Mark

        old = next((m for m in self.marks if abs(m.t - t) < 6e-4 and abs(m.wall_time - wall_time) < 6e-4), None)
        if old is None:
            raise KeyError("no such mark")
        self.marks.remove(old)
        new = None if text is None else Mark(old.t, text, old.wall_time, old.source)
        if new is not None:
            self.marks.append(new)
        self.server.edit_mark(old, new)
        return old

    def stop(self) -> None:
        self.stopped = True


def test_the_clinicians_view(playwright_api, tmp_path):
    """Calibration status, confidence, the fixed colour scale, mark edit/delete, a hostile mark, the end button."""
    from websockets.sync.client import connect

    from monitor.live.events import Point, SessionInfo, Status
    from monitor.live.heatmap import RollingHeatmap
    from monitor.serve.server import DashboardServer, ServerConfig

    session = SessionInfo(session_id="s-view", started_at=time.time(), model_id="m@1", model_version="1",
                          device="cpu", labels=("neutral",), source="test", patient_id="p-1",
                          settings={"normalization": "enrolment", "speaker_baseline": None})
    controls = _Controls()
    heatmap = RollingHeatmap()
    server = DashboardServer(ServerConfig(port=0, token=TOKEN, heatmap_hz=10), controls=controls)
    controls.server = server
    server.start(session, heatmap)

    def speak(i: int, v: float, a: float, confidence: float) -> None:
        t = 2.0 * i
        heatmap.add(v, a, t + 1.5, duration=1.5, confidence=confidence)
        server.point(Point(i, t, t + 1.5, v, a, confidence, {"neutral": confidence}, 40.0))

    # confident points on the left, one uncertain guess far to the right
    for i, (v, a, c) in enumerate([(-0.5, 0.2, 0.9), (-0.45, 0.25, 0.85), (0.9, -0.8, 0.1), (-0.4, 0.3, 0.9)]):
        speak(i, v, a, c)
    browser = None
    problems: list[str] = []
    try:
        browser = playwright_api.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(15_000)
        page.on("console", lambda m: problems.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.goto(server.url)
        wait_until(page, "document.getElementById('conn').dataset.state === 'live'", 20, "a live connection")

        # Calibration status in the header: not enrolled, said plainly.
        assert page.get_attribute("#calibration", "data-enrolled") == "false"
        assert page.inner_text("#calibration") == "Uncalibrated: speaker not enrolled"
        assert "population averages" in page.get_attribute("#calibration", "title")

        # Confidence: a legend, and the uncertain point is not joined into the trajectory.
        assert page.is_visible("#confidence-legend") and "confidence" in page.inner_text("#confidence-legend")
        wait_until(page, "moodDashboard.state.points.length === 4", 10, "the points")
        wait_until(page, "moodDashboard.state.trajectory === 3", 5, "the trajectory through the confident points")

        # The heat map's colour scale is fixed: the legend's maximum stays while the map's own peak grows.
        wait_until(page, "moodDashboard.state.heat && moodDashboard.state.heat.points === 4", 10, "a heat map")
        legend, peak = page.inner_text("#legend-max"), page.evaluate("moodDashboard.state.heat.max")
        assert legend == "2 s or more"
        for i in range(4, 14):
            speak(i, -0.45, 0.25, 0.95)
        wait_until(page, "moodDashboard.state.heat.points === 14", 10, "a later heat map")
        assert page.evaluate("moodDashboard.state.heat.max") > peak  # the data grew...
        assert page.inner_text("#legend-max") == legend  # ...the scale did not follow it

        # A mark, edited and deleted from the page; every change comes back through the server.
        page.fill("#mark-text", "patient mentions work")
        page.press("#mark-text", "Enter")
        wait_until(page, "document.getElementById('marks').innerText.includes('patient mentions work')", 10, "mark")
        page.click("#marks .mark-edit-btn")
        page.fill("#marks .mark-edit input", "patient mentions her new job")
        page.press("#marks .mark-edit input", "Enter")
        wait_until(page, "document.getElementById('marks').innerText.includes('her new job')", 10, "the edit")
        assert [m.text for m in controls.marks] == ["patient mentions her new job"]
        page.once("dialog", lambda d: d.accept())
        page.click("#marks .mark-delete-btn")
        wait_until(page, "moodDashboard.state.marks.length === 0", 10, "the deletion")
        assert controls.marks == []

        # A hostile client's absurd mark is refused by the server and never reaches the page.
        with connect(server.url.replace("http://", "ws://").replace("/?", "/ws?"), open_timeout=10) as ws:
            ws.send(json.dumps({"type": "mark", "text": "far future", "t": 1e308, "id": "h"}))
            reply: dict = {}
            for _ in range(50):  # hello, snapshot, heat map frames, ..., the error
                reply = json.loads(ws.recv(timeout=5))
                if reply["type"] == "error":
                    break
            assert reply["type"] == "error" and reply["code"] == "bad_field" and reply["id"] == "h", reply
        assert page.evaluate("1 + 1") == 2 and page.evaluate("moodDashboard.state.marks.length") == 0
        assert page.evaluate(CANVAS_LIT, "tl-valence") > 0

        # The technical line is behind "details"; printing is one click (window.print, stubbed here).
        server.status(Status(t=30.0, speech_active=False, paused=False, frame_queue=0, segment_queue=0,
                             result_queue=0, dropped_frames=0, failed_segments=0, segments=14, points=14, device="cpu"))
        wait_until(page, "document.getElementById('status-line').textContent.includes('queues')", 10, "a status")
        assert not page.is_visible("#status-line")
        page.click("#details summary")
        assert page.is_visible("#status-line") and "queues" in page.inner_text("#status-line")
        page.evaluate("window.print = () => { window.printed = true; }")
        page.click("#print-btn")
        assert page.evaluate("window.printed") is True

        # Ending the session asks first; "cancel" does nothing, "OK" asks the pipeline to stop.
        page.once("dialog", lambda d: d.dismiss())
        page.click("#end-btn")
        assert controls.stopped is False
        page.once("dialog", lambda d: d.accept())
        page.click("#end-btn")
        wait_until(page, "document.getElementById('notice').innerText.startsWith('Ending the session')", 10, "ack")
        assert controls.stopped is True
        assert problems == [], problems
    finally:
        if browser is not None:
            browser.close()
        server.close()
