/* Mood monitor dashboard: live circumplex, heat map, time lines, marks, and the patient's history.
 *
 * Vanilla JS and Canvas, no build step and nothing from the internet. The
 * server's protocol (docs/protocol.md) is the source of truth: every
 * (re)connect starts with `hello` + `snapshot`, which replace the whole local
 * state, so a dropped connection cannot leave the page out of sync.
 */
(() => {
  "use strict";

  // ---- constants -------------------------------------------------------------------------
  const PROTOCOL = 2;
  const MAX_POINTS = 20000; // kept for the time lines; the server's snapshot holds the recent ones
  const TRAIL = 24; // points in the fading trajectory
  const TRAIL_SECONDS = 120; // session seconds over which the trajectory fades out
  const PING_MS = 15000;
  const STALE_MS = 45000; // no message at all for this long: assume a dead connection
  const MAX_TICKS = 12; // time-line labels drawn at most, whatever the time span
  const MARK_AHEAD_S = 60; // marks further past the session's clock than this are listed, not drawn
  // Points the model is less sure of than this are drawn faint and are not joined into the trajectory: one
  // uncertain guess must not swing the line across the whole circle.
  const MIN_TRAJECTORY_CONFIDENCE = 0.4;
  // The heat map's fixed colour scale, in seconds of recent speech (confidence-weighted) per cell; the server's
  // hello.heatmap.scale_max replaces it. It never follows the data, so a colour means the same all session.
  let HEAT_SCALE_S = 2.0;

  // Viridis (perceptually uniform, colour-blind safe), 17 stops interpolated to a 256-entry table.
  const VIRIDIS_STOPS = ["440154", "48186a", "472d7b", "424086", "3b528b", "33638d", "2c728e", "26828e", "21918c",
    "1fa088", "28ae80", "3fbc73", "5ec962", "84d44b", "addc30", "d8e219", "fde725"];
  const LUT = buildLut(VIRIDIS_STOPS);

  // Russell's (1980) affect words at approximately their angles on the circumplex (degrees, 0 = pleasant);
  // replaced by the server's list in its hello (calibration/quadrants.py), which the reports print too.
  let AFFECT_WORDS = [
    ["excited", 50], ["happy · pleased", 14], ["content", 340], ["relaxed · calm", 313], ["sleepy · tired", 270],
    ["bored", 236], ["sad · depressed", 206], ["miserable", 186], ["distressed", 148], ["afraid · alarmed", 124],
    ["angry", 101],
  ];
  // The quadrant rule and its words come from the server's hello (calibration/quadrants.py): one definition.
  let QUADRANT_NAMES = {};
  let NEUTRAL_RADIUS = 0;

  // ---- state -----------------------------------------------------------------------------
  const params = new URLSearchParams(location.search);
  const TOKEN = params.get("token") || "";
  if (params.has("token")) {
    // Read once, then taken out of the address bar, the browser history and bookmarks.
    params.delete("token");
    const rest = params.toString();
    history.replaceState(history.state, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
  }
  // The clinic's server: ?session=ID watches one of its sessions; ?capture=1&patient=ID streams this room.
  const SESSION = params.get("session") || "";
  const CAPTURE = params.get("capture") === "1";
  const PATIENT = params.get("patient") || "";
  const ROOM_NAME = params.get("room") || "";
  const ROOM_CHUNKS_MAX = 1200; // unacknowledged 100 ms chunks kept for a resume (two minutes)
  const S = {
    token: TOKEN,
    room: { session: null, ready: false, nextSeq: 0, unacked: [], dropped: 0, capture: null, ending: false },
    ws: null,
    conn: "connecting",
    hello: null,
    points: [],
    others: [], // points of other voices (counted: false): a faint layer, never in the summary
    lastVoice: null, // the latest point of any voice: its attribution is shown
    marks: [],
    summary: emptySummary(),
    heat: null, // {bins, data: Uint8Array, max, t, points, seq}
    status: null,
    paused: false,
    ended: false,
    retry: 0,
    holdUntil: 0,
    reconnectTimer: null,
    pingTimer: null,
    lastMessage: 0,
    rtt: null,
    view: "live",
    historyLoaded: false,
    editing: null, // the mark being edited: {t, wall_time}
    trajectory: 0,
  };
  const stats = { messages: 0, snapshots: 0, heatmapFrames: 0, points: 0, connects: 0, errors: [] };

  const $ = (id) => document.getElementById(id);
  const el = {};

  function emptySummary() {
    const q = {};
    for (const k of Object.keys(QUADRANT_NAMES)) q[k] = 0;
    return { points: 0, speech: 0, weight: 0, sumV: 0, sumA: 0, quadrantWeight: q };
  }

  function buildLut(stops) {
    const rgb = stops.map((h) => [parseInt(h.slice(0, 2), 16), parseInt(h.slice(2, 4), 16), parseInt(h.slice(4, 6), 16)]);
    const lut = new Uint8ClampedArray(256 * 3);
    for (let i = 0; i < 256; i++) {
      const x = (i / 255) * (rgb.length - 1);
      const j = Math.min(Math.floor(x), rgb.length - 2);
      const f = x - j;
      for (let c = 0; c < 3; c++) lut[i * 3 + c] = Math.round(rgb[j][c] * (1 - f) + rgb[j + 1][c] * f);
    }
    return lut;
  }

  function quadrantOf(v, a) {
    if (Math.hypot(v, a) < NEUTRAL_RADIUS) return "neutral";
    if (a >= 0) return v >= 0 ? "high_arousal_positive" : "high_arousal_negative";
    return v >= 0 ? "low_arousal_positive" : "low_arousal_negative";
  }

  // ---- formatting --------------------------------------------------------------------------
  function fmtTime(s) {
    if (s == null || !isFinite(s)) return "–";
    s = Math.max(0, Math.round(s));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    const mm = h ? String(m).padStart(2, "0") : String(m);
    return (h ? h + ":" : "") + mm + ":" + String(sec).padStart(2, "0");
  }
  function fmtSigned(x, digits = 2) {
    if (x == null || !isFinite(x)) return "–";
    return (x >= 0 ? "+" : "−") + Math.abs(x).toFixed(digits);
  }
  function pct(x) { return (x == null || !isFinite(x)) ? "–" : Math.round(x * 100) + "%"; }

  // ---- connection --------------------------------------------------------------------------
  function setConn(state, text) {
    S.conn = state;
    el.conn.dataset.state = state;
    el.conn.textContent = text || state;
  }

  function connect() {
    clearTimeout(S.reconnectTimer);
    S.reconnectTimer = null;
    if (!S.token) {
      setConn("offline", "no token in the address");
      return;
    }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const path = CAPTURE ? "/room" : "/ws";
    const which = SESSION && !CAPTURE ? `&session=${encodeURIComponent(SESSION)}` : "";
    const ws = new WebSocket(`${scheme}//${location.host}${path}?token=${encodeURIComponent(S.token)}${which}`);
    S.ws = ws;
    setConn(S.retry ? "reconnecting" : "connecting", S.retry ? "reconnecting…" : "connecting…");
    ws.onopen = () => {
      if (S.ws !== ws) return;
      stats.connects += 1;
      S.retry = 0;
      S.lastMessage = Date.now();
      setConn("live", "live");
      clearInterval(S.pingTimer);
      S.pingTimer = setInterval(() => ping(ws), PING_MS);
      if (CAPTURE) {
        ws.send(JSON.stringify({ type: "room_hello", version: 1, patient: PATIENT, room: ROOM_NAME,
          session: S.room.session, format: "pcm16", sample_rate: 16000 }));
      }
    };
    ws.onmessage = (ev) => {
      if (S.ws !== ws) return;
      S.lastMessage = Date.now();
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch (err) {
        stats.errors.push("unparsable message");
        return;
      }
      stats.messages += 1;
      handle(msg);
    };
    ws.onerror = () => { /* a close event follows; reconnecting is handled there */ };
    ws.onclose = (ev) => {
      if (S.ws !== ws) return;
      S.ws = null;
      S.room.ready = false; // captured audio waits in S.room.unacked for the resume
      clearInterval(S.pingTimer);
      if (ev.code === 1001 || (S.ended && ev.code !== 1008)) {
        S.ended = true;
        setConn("ended", "session ended");
        updateControls();
        return;
      }
      scheduleReconnect(ev.reason);
    };
  }

  function scheduleReconnect(reason) {
    // Quick retries for a blip; after ~10 failures the monitor is probably gone (or restarted with a new
    // link, which this page cannot know), so keep trying only every 30 s.
    const giveUp = S.retry >= 10;
    const delay = (giveUp ? 30000 : Math.min(5000, 500 * 2 ** S.retry)) + Math.random() * 250;
    S.retry += 1;
    if (giveUp) setConn("offline", "offline: monitor unreachable (click to retry)");
    else setConn("reconnecting", `reconnecting in ${Math.ceil(delay / 1000)} s${reason ? " (" + reason + ")" : ""}`);
    const attempt = () => {
      const wait = S.holdUntil - Date.now();
      if (wait > 0) {
        S.reconnectTimer = setTimeout(attempt, Math.min(wait, 250));
        return;
      }
      connect();
    };
    S.reconnectTimer = setTimeout(attempt, delay);
  }

  function ping(ws) {
    if (ws.readyState !== WebSocket.OPEN) return;
    if (Date.now() - S.lastMessage > STALE_MS) {
      ws.close(4000, "no messages from the server");
      return;
    }
    send({ type: "ping", t: performance.now() });
  }

  function send(obj) {
    if (!S.ws || S.ws.readyState !== WebSocket.OPEN) {
      notice("Not connected; try again when the connection is live.", "error");
      return false;
    }
    S.ws.send(JSON.stringify(obj));
    return true;
  }

  // ---- messages ----------------------------------------------------------------------------
  function handle(msg) {
    switch (msg.type) {
      case "hello": onHello(msg); break;
      case "snapshot": onSnapshot(msg); break;
      case "point": onPoint(msg); break;
      case "heatmap": onHeatmap(msg); break;
      case "mark": onMark(msg); break;
      case "mark_update": onMarkUpdate(msg); break;
      case "status": onStatus(msg); break;
      case "ack": onAck(msg); break;
      case "pong":
        if (typeof msg.t === "number") S.rtt = performance.now() - msg.t;
        renderStatusLine();
        break;
      case "error":
        stats.errors.push(msg.code);
        notice(`The monitor refused that: ${msg.message}`, "error");
        break;
      case "room_ready": onRoomReady(msg); break;
      case "audio_ack": dropAcked(msg.next_seq); break;
      case "room_ended": // the session is over (also the answer to a resume that came too late)
        stopCapture();
        S.ended = true;
        setConn("ended", "session ended");
        updateControls();
        break;
      case "end":
        S.ended = true;
        if (msg.summary) S.summary = summaryFromServer(msg.summary);
        setConn("ended", "session ended");
        updateControls();
        renderSummary();
        renderMarks(); // no more editing once the session is over
        break;
      default:
        break; // newer servers may add message types; ignore them
    }
  }

  function onHello(msg) {
    S.hello = msg;
    if (msg.circumplex) {
      QUADRANT_NAMES = msg.circumplex.quadrants || {};
      NEUTRAL_RADIUS = Number(msg.circumplex.neutral_radius) || 0;
    }
    if (Array.isArray(msg.circumplex && msg.circumplex.affect_words)) AFFECT_WORDS = msg.circumplex.affect_words;
    const scale = Number(msg.heatmap && msg.heatmap.scale_max);
    if (isFinite(scale) && scale > 0) HEAT_SCALE_S = scale;
    renderCalibration(msg.calibration);
    if (msg.protocol !== PROTOCOL) notice(`This page speaks protocol ${PROTOCOL}; the monitor speaks ${msg.protocol}.`, "error");
    const s = msg.session || {};
    const parts = [];
    if (s.patient_id) parts.push(`patient ${s.patient_id}`);
    if (s.started_at) parts.push(`started ${new Date(s.started_at * 1000).toLocaleTimeString()}`);
    if (s.source) parts.push(s.source);
    if (msg.model) parts.push(`model ${msg.model.id}`);
    if (msg.device) parts.push(msg.device);
    el.sessionInfo.textContent = parts.join(" · ");
    el.sessionInfo.title = s.id ? `session ${s.id}` : "";
    if (msg.history) loadPatients();
    else setPatientOptions([], "no store: history is off");
    updateControls();
    renderVoices();
  }

  /** The header says whether placement is calibrated to this speaker; without enrolment, plainly that it is not. */
  function renderCalibration(cal) {
    const enrolled = !!(cal && cal.enrolled);
    el.calibration.dataset.enrolled = cal ? String(enrolled) : "unknown";
    el.calibration.textContent = !cal ? "calibration: unknown" :
      (enrolled ? "Calibrated: speaker enrolled" : "Uncalibrated: speaker not enrolled");
    el.calibration.title = (cal && cal.text) || "";
  }

  function summaryFromServer(sum) {
    const out = emptySummary();
    out.points = sum.points || 0;
    out.speech = sum.speech_seconds || 0;
    out.weight = sum.weight || 0;
    out.sumV = (sum.mean_valence || 0) * out.weight;
    out.sumA = (sum.mean_arousal || 0) * out.weight;
    for (const k of Object.keys(out.quadrantWeight)) out.quadrantWeight[k] = ((sum.quadrant_share || {})[k] || 0) * out.weight;
    return out;
  }

  /** A session time as sent, or null when it is not a usable number (the page must never trust one blindly). */
  function sessionSeconds(x) {
    return typeof x === "number" && isFinite(x) && x >= 0 ? x : null;
  }

  function onSnapshot(msg) {
    stats.snapshots += 1;
    const valid = (msg.points || []).filter((p) => sessionSeconds(p.t_start) != null && sessionSeconds(p.t_end) != null);
    S.points = valid.filter((p) => p.counted !== false).slice(-MAX_POINTS);
    S.others = valid.filter((p) => p.counted === false).slice(-MAX_POINTS);
    S.lastVoice = valid.length ? valid[valid.length - 1] : null;
    renderVoices();
    S.marks = (msg.marks || []).filter((m) => sessionSeconds(m.t) != null);
    S.summary = summaryFromServer(msg.summary || {});
    S.paused = !!msg.paused;
    S.ended = !!msg.ended;
    S.status = msg.status || null;
    S.heat = null;
    if (msg.heatmap) onHeatmap(msg.heatmap, true);
    if (S.ended) setConn("ended", "session ended");
    renderMarks();
    renderAll();
  }

  function onPoint(p) {
    if (sessionSeconds(p.t_start) == null || sessionSeconds(p.t_end) == null) return;
    stats.points += 1;
    S.lastVoice = p;
    renderVoices();
    if (p.counted === false) { // another voice: shown faintly if asked, never in the patient's map or summary
      S.others.push(p);
      if (S.others.length > MAX_POINTS) S.others.splice(0, S.others.length - MAX_POINTS);
      schedule("overlay");
      return;
    }
    S.points.push(p);
    if (S.points.length > MAX_POINTS) S.points.splice(0, S.points.length - MAX_POINTS);
    // Same weighting as the server's summary and the history: segment duration x confidence.
    const d = Math.max(0, p.t_end - p.t_start);
    const w = d * Math.max(0, p.confidence || 0);
    const sum = S.summary;
    sum.points += 1;
    sum.speech += d;
    sum.weight += w;
    sum.sumV += w * p.valence;
    sum.sumA += w * p.arousal;
    const q = quadrantOf(p.valence, p.arousal);
    sum.quadrantWeight[q] = (sum.quadrantWeight[q] || 0) + w;
    renderLatest();
    renderSummary();
    schedule("overlay", "timelines");
  }

  function decodeB64(b64) {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function onHeatmap(h, fromSnapshot) {
    if (!fromSnapshot) stats.heatmapFrames += 1;
    if (h.encoding !== "u8-base64") return;
    const data = decodeB64(h.data);
    if (data.length !== h.bins * h.bins) return;
    S.heat = { bins: h.bins, data, max: h.max || 0, t: h.t, points: h.points, seq: h.seq };
    schedule("heat");
  }

  function onMark(m) {
    if (sessionSeconds(m.t) == null) return;
    if (S.marks.some((x) => x.wall_time === m.wall_time && x.text === m.text)) return;
    S.marks.push({ t: m.t, text: m.text, wall_time: m.wall_time, source: m.source });
    renderMarks();
    schedule("timelines");
  }

  /** A mark edited (``mark`` is its new version) or deleted (``mark`` null) by any viewer. */
  function onMarkUpdate(msg) {
    const i = S.marks.findIndex((x) => x.t === msg.t && x.wall_time === msg.wall_time);
    if (i >= 0) S.marks.splice(i, 1);
    const m = msg.mark;
    if (m && sessionSeconds(m.t) != null) S.marks.push({ t: m.t, text: m.text, wall_time: m.wall_time, source: m.source });
    S.editing = null;
    renderMarks();
    schedule("timelines");
  }

  function onStatus(st) {
    S.status = st;
    S.paused = !!st.paused;
    updateControls();
    renderStatusLine();
    renderVoices();
    schedule("timelines");
  }

  function onAck(msg) {
    if (msg.of === "mark" && msg.mark) {
      el.markText.value = "";
      el.markBtn.disabled = false;
      notice(`Marked at ${fmtTime(msg.mark.t)}.`, "ok");
    } else if (msg.of === "mark_edit" || msg.of === "mark_delete") {
      notice(msg.of === "mark_edit" ? "Mark changed." : "Mark deleted.", "ok");
    } else if (msg.of === "end_session") {
      notice("Ending the session: what was said is still being analysed and stored…", "ok");
    } else if (msg.of === "pause" || msg.of === "resume") {
      S.paused = !!msg.paused;
      notice(S.paused ? "Paused: speech is not analysed until you resume." : "Resumed.", "ok");
      updateControls();
    }
  }

  // ---- controls ----------------------------------------------------------------------------
  function notice(text, kind) {
    el.notice.textContent = text;
    el.notice.dataset.kind = kind || "";
  }

  function updateControls() {
    const canControl = !!(S.hello && S.hello.controls) && !S.ended;
    el.pauseBtn.disabled = !canControl;
    el.pauseBtn.textContent = S.paused ? "Resume" : "Pause";
    el.pauseBtn.setAttribute("aria-pressed", S.paused ? "true" : "false");
    el.markBtn.disabled = !canControl;
    el.markText.disabled = !canControl;
    el.endBtn.disabled = !canControl;
    el.marks.dataset.editable = String(canControl);
    const speech = S.paused ? "paused" : (S.status && S.status.speech_active ? "speech" : "silence");
    el.speech.dataset.state = speech;
    el.speech.textContent = S.ended ? "ended" : speech;
  }

  function submitMark(ev) {
    ev.preventDefault();
    const text = el.markText.value.trim();
    if (!text) return;
    if (send({ type: "mark", text, id: "m" + Date.now() })) el.markBtn.disabled = true;
    setTimeout(() => { el.markBtn.disabled = !(S.hello && S.hello.controls) || S.ended; }, 1500);
  }

  // ---- drawing -----------------------------------------------------------------------------
  const dirty = new Set();
  let frameRequested = false;
  function schedule(...parts) {
    for (const p of parts) dirty.add(p);
    if (!frameRequested) {
      frameRequested = true;
      requestAnimationFrame(() => {
        frameRequested = false;
        const parts = new Set(dirty);
        dirty.clear();
        if (S.view !== "live") return;
        if (parts.has("heat")) drawHeat();
        if (parts.has("overlay")) drawOverlay();
        if (parts.has("timelines")) drawTimelines();
      });
    }
  }
  function renderAll() {
    renderLatest();
    renderSummary();
    updateControls();
    renderStatusLine();
    schedule("heat", "overlay", "timelines");
  }

  /** Size a canvas's backing store to its CSS box at the device's pixel ratio; returns its context in CSS pixels. */
  function fit(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, canvas.clientWidth), h = Math.max(1, canvas.clientHeight);
    const bw = Math.round(w * dpr), bh = Math.round(h * dpr);
    if (canvas.width !== bw || canvas.height !== bh) {
      canvas.width = bw;
      canvas.height = bh;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    return { ctx, w, h };
  }

  /** Geometry of the circumplex: the square [-1, 1]^2 inside a margin for axis titles. */
  function geometry(w) {
    const margin = Math.max(18, w * 0.06);
    const r = Math.max(0, w / 2 - margin); // a hidden (zero-width) canvas draws nothing rather than throwing
    const c = w / 2;
    return { c, r, x: (v) => c + v * r, y: (a) => c - a * r };
  }

  /** A bins x bins heat grid (rows = arousal bottom-up) as an image, scaled so `scale` maps to the top colour. */
  function heatImage(values, bins, scale) {
    const img = new ImageData(bins, bins);
    for (let row = 0; row < bins; row++) {
      const y = bins - 1 - row; // arousal grows upwards
      for (let col = 0; col < bins; col++) {
        const v = scale > 0 ? Math.min(1, values[row * bins + col] / scale) : 0;
        const o = (y * bins + col) * 4;
        if (v <= 0) { img.data[o + 3] = 0; continue; }
        const i = Math.round(v * 255) * 3;
        img.data[o] = LUT[i];
        img.data[o + 1] = LUT[i + 1];
        img.data[o + 2] = LUT[i + 2];
        img.data[o + 3] = Math.round(255 * Math.min(1, 0.12 + 0.95 * Math.sqrt(v)));
      }
    }
    const off = document.createElement("canvas");
    off.width = bins;
    off.height = bins;
    off.getContext("2d").putImageData(img, 0, 0);
    return off;
  }

  function drawHeat() {
    const canvas = el.heat;
    const { ctx, w } = fit(canvas);
    const g = geometry(w);
    // A fixed scale (hello.heatmap.scale_max seconds of speech per cell), not the frame's own peak: the legend
    // and the colours mean the same at minute 5 and at minute 50.
    el.legendMax.textContent = `${HEAT_SCALE_S} s or more`;
    if (!S.heat) return;
    const seconds = new Float32Array(S.heat.data.length);
    for (let i = 0; i < seconds.length; i++) seconds[i] = (S.heat.data[i] / 255) * S.heat.max;
    const off = heatImage(seconds, S.heat.bins, HEAT_SCALE_S);
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(off, g.c - g.r, g.c - g.r, 2 * g.r, 2 * g.r);
  }

  function drawLegend(canvas) {
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(canvas.width, canvas.height);
    for (let x = 0; x < canvas.width; x++) {
      const i = Math.round((x / (canvas.width - 1)) * 255) * 3;
      for (let y = 0; y < canvas.height; y++) {
        const o = (y * canvas.width + x) * 4;
        img.data[o] = LUT[i]; img.data[o + 1] = LUT[i + 1]; img.data[o + 2] = LUT[i + 2]; img.data[o + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
  }

  function drawFrame(ctx, g, w, opts = {}) {
    const small = w < 300;
    // Square, axes, unit circle.
    ctx.strokeStyle = "rgba(139,152,167,0.35)";
    ctx.lineWidth = 1;
    ctx.strokeRect(g.c - g.r, g.c - g.r, 2 * g.r, 2 * g.r);
    ctx.beginPath();
    ctx.moveTo(g.x(-1), g.y(0)); ctx.lineTo(g.x(1), g.y(0));
    ctx.moveTo(g.x(0), g.y(-1)); ctx.lineTo(g.x(0), g.y(1));
    ctx.stroke();
    ctx.strokeStyle = "rgba(230,237,243,0.55)";
    ctx.lineWidth = small ? 1 : 1.5;
    ctx.beginPath();
    ctx.arc(g.c, g.c, g.r, 0, 2 * Math.PI);
    ctx.stroke();
    if (opts.bare) return;
    const fs = Math.max(10, Math.min(14, w / 42));
    ctx.font = `${fs}px system-ui, sans-serif`;
    ctx.textBaseline = "middle";
    // Russell's affect words, just inside the circle.
    ctx.textAlign = "center";
    for (const [word, deg] of AFFECT_WORDS) {
      const rad = (deg * Math.PI) / 180;
      const x = g.x(0.8 * Math.cos(rad)), y = g.y(0.8 * Math.sin(rad));
      ctx.lineWidth = 3;
      ctx.strokeStyle = "rgba(15,20,26,0.75)";
      ctx.strokeText(word, x, y);
      ctx.fillStyle = "rgba(230,237,243,0.85)";
      ctx.fillText(word, x, y);
      ctx.beginPath();
      ctx.arc(g.x(Math.cos(rad)), g.y(Math.sin(rad)), 2, 0, 2 * Math.PI);
      ctx.fill();
    }
    // Quadrant labels in the square's corners.
    ctx.font = `${fs * 0.85}px system-ui, sans-serif`;
    ctx.fillStyle = "rgba(139,152,167,0.95)";
    const inset = 0.97;
    ctx.textAlign = "left";
    ctx.fillText("unpleasant · high arousal", g.x(-inset), g.y(inset));
    ctx.fillText("unpleasant · low arousal", g.x(-inset), g.y(-inset));
    ctx.textAlign = "right";
    ctx.fillText("pleasant · high arousal", g.x(inset), g.y(inset));
    ctx.fillText("pleasant · low arousal", g.x(inset), g.y(-inset));
    // Axis titles in the margin.
    ctx.fillStyle = "rgba(230,237,243,0.8)";
    ctx.textAlign = "center";
    ctx.fillText("valence: unpleasant ← → pleasant", g.c, g.c + g.r + (w / 2 - g.r) / 2);
    ctx.save();
    ctx.translate(g.c - g.r - (w / 2 - g.r) / 2, g.c);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText("arousal: low ← → high", 0, 0);
    ctx.restore();
  }

  function drawOverlay() {
    const { ctx, w } = fit(el.overlay);
    const g = geometry(w);
    drawFrame(ctx, g, w);
    drawOthers(ctx, g);
    const pts = S.points.slice(-TRAIL);
    if (!pts.length) return;
    const tNow = pts[pts.length - 1].t_end;
    // Trajectory through the confident points only (fading with the age of each step's newer end): a
    // low-confidence guess is shown as a faint dot, but the line does not jump to it and back.
    const sure = pts.filter((p) => (p.confidence || 0) >= MIN_TRAJECTORY_CONFIDENCE);
    S.trajectory = sure.length; // points the line joins (the end-to-end test reads it)
    for (let i = 1; i < sure.length; i++) {
      const age = tNow - sure[i].t_end;
      const alpha = Math.max(0.08, 1 - age / TRAIL_SECONDS) * (0.25 + 0.75 * (i / sure.length));
      ctx.strokeStyle = `rgba(255,255,255,${alpha.toFixed(3)})`;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      ctx.moveTo(g.x(sure[i - 1].valence), g.y(sure[i - 1].arousal));
      ctx.lineTo(g.x(sure[i].valence), g.y(sure[i].arousal));
      ctx.stroke();
    }
    // Dots: size and opacity show the model's confidence (the legend under the circle says so).
    for (let i = 0; i < pts.length - 1; i++) {
      const age = tNow - pts[i].t_end;
      const conf = Math.max(0, Math.min(1, pts[i].confidence || 0));
      const alpha = Math.max(0.1, 1 - age / TRAIL_SECONDS) * (0.15 + 0.85 * conf);
      ctx.fillStyle = `rgba(255,255,255,${alpha.toFixed(3)})`;
      ctx.beginPath();
      ctx.arc(g.x(pts[i].valence), g.y(pts[i].arousal), 1.5 + 3.5 * conf, 0, 2 * Math.PI);
      ctx.fill();
    }
    // The newest point: filled, ringed, labelled.
    const p = pts[pts.length - 1];
    const x = g.x(p.valence), y = g.y(p.arousal);
    ctx.globalAlpha = 0.35 + 0.65 * Math.max(0, Math.min(1, p.confidence || 0));
    ctx.fillStyle = "#ff7a59";
    ctx.strokeStyle = "#ffffff";
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.arc(x, y, 7, 0, 2 * Math.PI);
    ctx.fill();
    ctx.stroke();
    ctx.strokeStyle = "rgba(255,122,89,0.6)";
    ctx.beginPath();
    ctx.arc(x, y, 13, 0, 2 * Math.PI);
    ctx.stroke();
    ctx.globalAlpha = 1;
  }

  function drawSeries(canvas, key, opts) {
    const { ctx, w, h } = fit(canvas);
    const left = 34, right = 10, top = 8, bottom = 20;
    const pw = w - left - right, ph = h - top - bottom;
    const tMax = Math.max(10, opts.tMax);
    const X = (t) => left + (t / tMax) * pw;
    const Y = (v) => top + (1 - (v + 1) / 2) * ph;
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "rgba(139,152,167,0.95)";
    ctx.strokeStyle = "rgba(139,152,167,0.25)";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const v of [-1, 0, 1]) {
      ctx.beginPath(); ctx.moveTo(left, Y(v)); ctx.lineTo(left + pw, Y(v)); ctx.stroke();
      ctx.fillText(v === 0 ? "0" : (v > 0 ? "+1" : "−1"), left - 6, Y(v));
    }
    // Time ticks: about 6, on round numbers of seconds; never more than MAX_TICKS, whatever the span.
    const steps = [5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200];
    const step = steps.find((s) => tMax / s <= 7) || Math.ceil(tMax / 7 / 3600) * 3600;
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let i = 0; i <= MAX_TICKS && i * step <= tMax; i++) {
      const t = i * step;
      ctx.textAlign = t === 0 ? "left" : (X(t) > left + pw - 20 ? "right" : "center");
      ctx.fillText(fmtTime(t), X(t), top + ph + 5);
    }
    // Marks.
    ctx.setLineDash([4, 3]);
    ctx.strokeStyle = "rgba(242,184,75,0.9)";
    ctx.fillStyle = "rgba(242,184,75,0.95)";
    ctx.textAlign = "left";
    const lanes = []; // right edge of the last label in each text lane, so close marks do not overprint
    for (const m of S.marks.slice().sort((a, b) => a.t - b.t)) {
      if (!(m.t <= tMax)) continue; // beyond the drawn span (the list still shows it)
      const x = X(m.t);
      ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + ph); ctx.stroke();
      if (!opts.labels) continue;
      const label = m.text.length > 24 ? m.text.slice(0, 23) + "…" : m.text;
      const width = ctx.measureText(label).width;
      let lane = lanes.findIndex((right) => right < x);
      if (lane < 0) lane = lanes.length;
      if (lane > 3) continue;
      lanes[lane] = x + 3 + width + 6;
      ctx.fillText(label, x + 3, top + lane * 12);
    }
    ctx.setLineDash([]);
    // The series: a line through segment midpoints, a dot per segment sized by confidence.
    const pts = S.points;
    ctx.strokeStyle = opts.colour;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    pts.forEach((p, i) => {
      const x = X((p.t_start + p.t_end) / 2), y = Y(p[key]);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
    ctx.fillStyle = opts.colour;
    for (const p of pts) {
      ctx.beginPath();
      ctx.arc(X((p.t_start + p.t_end) / 2), Y(p[key]), 1.5 + 2.5 * (p.confidence || 0), 0, 2 * Math.PI);
      ctx.fill();
    }
  }

  function drawTimelines() {
    const last = S.points.length ? S.points[S.points.length - 1].t_end : 0;
    const clock = Math.max(last, (S.status && sessionSeconds(S.status.t)) || 0);
    // Marks stretch the span only as far as the session can have run: one absurd time must not squash the rest.
    const marked = S.marks.map((m) => m.t).filter((t) => t <= clock + MARK_AHEAD_S);
    const tMax = Math.max(clock, ...marked) * 1.02;
    drawSeries(el.tlValence, "valence", { tMax, colour: "#4fb3d9", labels: true });
    drawSeries(el.tlArousal, "arousal", { tMax, colour: "#c792ea", labels: false });
  }

  function renderLatest() {
    const p = S.points[S.points.length - 1];
    if (!p) {
      el.latest.textContent = "Waiting for speech…";
      return;
    }
    // a point carries every class's probability; the line shows the three most likely
    const probs = Object.entries(p.probabilities || {}).sort((a, b) => b[1] - a[1]).slice(0, 3)
      .map(([k, v]) => `${k} ${pct(v)}`).join(", ");
    el.latest.textContent = `Latest ${fmtTime(p.t_start)}–${fmtTime(p.t_end)}: valence ${fmtSigned(p.valence)}, ` +
      `arousal ${fmtSigned(p.arousal)}, confidence ${pct(p.confidence)}${probs ? " · " + probs : ""} · ` +
      `${Math.round(p.latency_ms)} ms after speech ended`;
  }

  function renderSummary() {
    const s = S.summary;
    el.sumSpeech.textContent = fmtTime(s.speech);
    el.sumPoints.textContent = String(s.points);
    el.sumValence.textContent = s.weight > 0 ? fmtSigned(s.sumV / s.weight) : "–";
    el.sumArousal.textContent = s.weight > 0 ? fmtSigned(s.sumA / s.weight) : "–";
    const rows = [];
    for (const [k, name] of Object.entries(QUADRANT_NAMES)) {
      const share = s.weight > 0 ? s.quadrantWeight[k] / s.weight : 0;
      rows.push([name, share]);
    }
    el.quadrants.replaceChildren(...rows.map(([name, share]) => {
      const row = document.createElement("div");
      row.className = "quadrant";
      const label = document.createElement("span");
      label.textContent = name;
      const track = document.createElement("span");
      track.className = "track";
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.display = "block";
      fill.style.width = (share * 100).toFixed(1) + "%";
      track.append(fill);
      const p = document.createElement("span");
      p.className = "pct";
      p.textContent = pct(share);
      row.append(label, track, p);
      return row;
    }));
  }

  function renderMarks() {
    const editable = !!(S.hello && S.hello.controls) && !S.ended;
    const items = S.marks.slice().sort((a, b) => a.t - b.t).map((m) => {
      const li = document.createElement("li");
      const t = document.createElement("span");
      t.className = "t";
      t.textContent = fmtTime(m.t);
      li.append(t);
      const key = { t: m.t, wall_time: m.wall_time };
      if (S.editing && S.editing.t === m.t && S.editing.wall_time === m.wall_time) {
        const form = document.createElement("form");
        form.className = "mark-edit";
        const input = document.createElement("input");
        input.type = "text";
        input.maxLength = 500;
        input.value = m.text;
        input.setAttribute("aria-label", "Mark text");
        const save = button("Save", "btn small primary");
        save.type = "submit";
        const cancel = button("Cancel", "btn small");
        cancel.addEventListener("click", () => { S.editing = null; renderMarks(); });
        form.addEventListener("submit", (ev) => {
          ev.preventDefault();
          const text = input.value.trim();
          if (text && text !== m.text) send({ type: "mark_edit", ...key, text, id: "e" + Date.now() });
          else { S.editing = null; renderMarks(); }
        });
        form.append(input, save, cancel);
        li.append(form);
        setTimeout(() => input.focus(), 0);
        return li;
      }
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = m.text;
      li.append(text);
      if (editable) {
        const edit = button("Edit", "btn small mark-edit-btn");
        edit.addEventListener("click", () => { S.editing = key; renderMarks(); });
        const del = button("Delete", "btn small mark-delete-btn");
        del.addEventListener("click", () => {
          if (window.confirm(`Delete the mark at ${fmtTime(m.t)}: "${m.text}"?`)) {
            send({ type: "mark_delete", ...key, id: "d" + Date.now() });
          }
        });
        li.append(edit, del);
      }
      return li;
    });
    el.marks.replaceChildren(...items);
    el.marks.scrollTop = el.marks.scrollHeight;
  }

  function button(label, className) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = className;
    b.textContent = label;
    return b;
  }

  function endSession() {
    if (!window.confirm("End this session now? What was said so far is still analysed and stored; " +
      "the monitor then stops listening.")) return;
    if (CAPTURE) { // this page is the room: stop the microphone, send what is left, then end
      stopCapture();
      S.room.ending = true;
      flushRoom();
      el.endBtn.disabled = true;
      return;
    }
    if (send({ type: "end_session", id: "x" + Date.now() })) el.endBtn.disabled = true;
  }

  // ---- this room's microphone (capture mode, on the clinic's server) -------------------------
  function onRoomReady(msg) {
    S.room.session = msg.session;
    S.room.ready = true;
    dropAcked(msg.next_seq);
    S.room.unacked.forEach((c) => { c.sent = false; }); // re-send from next_seq: nothing lost, nothing twice
    if (el.captureBtn) el.captureBtn.hidden = !!S.room.capture;
    flushRoom();
  }

  function dropAcked(nextSeq) {
    const q = S.room.unacked;
    let n = 0;
    while (n < q.length && q[n].seq < nextSeq) n += 1;
    if (n) q.splice(0, n);
    flushRoom();
  }

  function flushRoom() {
    const ws = S.ws;
    if (!S.room.ready || !ws || ws.readyState !== WebSocket.OPEN) return;
    for (const c of S.room.unacked) {
      if (!c.sent) { ws.send(c.data); c.sent = true; }
    }
    if (S.room.ending && !S.room.capture && S.room.unacked.length === 0) {
      ws.send(JSON.stringify({ type: "room_end" }));
      S.room.ending = false;
    }
  }

  function onPcm(pcm) {
    const data = new ArrayBuffer(4 + pcm.byteLength);
    new DataView(data).setUint32(0, S.room.nextSeq, true);
    new Int16Array(data, 4).set(pcm);
    S.room.unacked.push({ seq: S.room.nextSeq, data, sent: false });
    S.room.nextSeq += 1;
    if (S.room.unacked.length > ROOM_CHUNKS_MAX) { // the server has been away too long: the oldest audio goes
      S.room.unacked.shift();
      S.room.dropped += 1;
    }
    flushRoom();
  }

  async function startCapture() {
    if (S.room.capture) return;
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1,
        echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
      const ctx = new AudioContext({ sampleRate: 16000 });
      await ctx.audioWorklet.addModule(`/capture-worklet.js?token=${encodeURIComponent(S.token)}`);
      const node = new AudioWorkletNode(ctx, "pcm-capture");
      node.port.onmessage = (ev) => onPcm(ev.data);
      const mute = ctx.createGain();
      mute.gain.value = 0; // pulled by the graph, never heard
      ctx.createMediaStreamSource(stream).connect(node).connect(mute).connect(ctx.destination);
      await ctx.resume();
      S.room.capture = { stream, ctx };
      if (el.captureBtn) el.captureBtn.hidden = true;
      notice("Streaming this room's microphone to the server.", "info");
    } catch (err) {
      notice(`The microphone could not be opened: ${err && err.message ? err.message : err}`, "error");
    }
  }

  function stopCapture() {
    const cap = S.room.capture;
    if (!cap) return;
    S.room.capture = null;
    cap.stream.getTracks().forEach((t) => t.stop());
    cap.ctx.close();
  }

  function renderStatusLine() {
    const st = S.status;
    const parts = [];
    if (st) {
      const q = st.queues || {};
      parts.push(`session ${fmtTime(st.t)}`);
      parts.push(`queues ${q.frames ?? "–"}/${q.segments ?? "–"}/${q.results ?? "–"}`);
      parts.push(`dropped audio frames ${st.dropped_frames}`);
      if (st.failed_segments) parts.push(`failed segments ${st.failed_segments}`);
      if (st.nonspeech_segments) parts.push(`non-speech skipped ${st.nonspeech_segments}`);
      if (st.server) parts.push(`viewers ${st.server.clients}`, `skipped heat map frames ${st.server.dropped_heatmap_frames}`);
    }
    if (S.rtt != null) parts.push(`round trip ${Math.round(S.rtt)} ms`);
    el.statusLine.textContent = parts.join(" · ");
  }

  // ---- history -----------------------------------------------------------------------------
  function showView(view) {
    S.view = view;
    const live = view === "live";
    el.viewLive.hidden = !live;
    el.viewHistory.hidden = live;
    el.tabLive.setAttribute("aria-selected", String(live));
    el.tabHistory.setAttribute("aria-selected", String(!live));
    if (live) schedule("heat", "overlay", "timelines");
    else if (S.hello && !S.hello.history) {
      el.historyMsg.textContent = "History is not available: this monitor keeps no store (it was started with --no-store).";
    } else {
      loadPatients().then(() => { if (!S.historyLoaded && el.historyPatient.value) loadHistory(); });
    }
  }

  /** The History picker's options: the patients the store knows (``/api/patients``), not a free-text box. */
  async function loadPatients() {
    if (S.hello && !S.hello.history) return;
    let data;
    try {
      const res = await fetch(`/api/patients?token=${encodeURIComponent(S.token)}`, { cache: "no-store" });
      data = await res.json();
      if (!res.ok) throw new Error(data && data.error ? data.error : `HTTP ${res.status}`);
    } catch (err) {
      setPatientOptions([], "could not list the patients");
      el.historyMsg.textContent = `Could not list the patients: ${err.message}`;
      return;
    }
    setPatientOptions((data.patients || []).map((p) => p.patient_id).filter((id) => typeof id === "string"));
  }

  function setPatientOptions(ids, placeholder) {
    const keep = el.historyPatient.value || (S.hello && S.hello.session && S.hello.session.patient_id) || "";
    const first = document.createElement("option");
    first.value = "";
    first.textContent = placeholder || (ids.length ? "choose a patient…" : "no patients in the store yet");
    el.historyPatient.replaceChildren(first, ...ids.map((id) => {
      const o = document.createElement("option");
      o.value = id;
      o.textContent = id;
      return o;
    }));
    if (keep && ids.includes(keep)) el.historyPatient.value = keep;
  }

  async function loadHistory(ev) {
    if (ev) ev.preventDefault();
    const patient = el.historyPatient.value.trim();
    if (!patient) {
      el.historyMsg.textContent = "Choose a patient.";
      return;
    }
    if (S.hello && !S.hello.history) {
      el.historyMsg.textContent = "History is not available: this monitor keeps no store (it was started with --no-store).";
      return;
    }
    const days = el.historyDays.value;
    el.historyMsg.textContent = "Loading…";
    const url = `/api/history?patient=${encodeURIComponent(patient)}&days=${encodeURIComponent(days)}&token=${encodeURIComponent(S.token)}`;
    let data;
    try {
      const res = await fetch(url, { cache: "no-store" });
      data = await res.json();
      if (res.status === 404) {
        el.historyBody.hidden = true;
        el.historyMsg.textContent = `No history: ${data && data.error ? data.error : "unknown patient"}.`;
        return;
      }
      if (!res.ok) throw new Error(data && data.error ? data.error : `HTTP ${res.status}`);
    } catch (err) {
      el.historyBody.hidden = true;
      el.historyMsg.textContent = `Could not load the history: ${err.message}`;
      return;
    }
    S.historyLoaded = true;
    renderHistory(data);
  }

  function renderHistory(data) {
    const days = data.days || [];
    const withData = days.filter((d) => d.metrics && d.metrics.points > 0);
    el.historyMsg.textContent = `${data.patient}: ${withData.length} of ${days.length} days with speech, ` +
      `${(data.sessions || []).length} sessions.`;
    el.historyBody.hidden = false;
    const scale = data.scale_max || 0;
    el.historyLegendMax.textContent = scale > 0 ? scale.toFixed(2) : "–";
    // Small multiples: every day on the same colour scale, so days compare by eye.
    el.historyGrid.replaceChildren(...days.map((d) => {
      const box = document.createElement("figure");
      box.className = "day";
      box.style.margin = "0";
      const m = d.metrics || {};
      box.dataset.empty = String(!(m.points > 0));
      const canvas = document.createElement("canvas");
      canvas.setAttribute("aria-label", `Heat map of ${d.date}`);
      const cap = document.createElement("figcaption");
      const date = document.createElement("div");
      date.className = "date";
      date.textContent = d.date;
      const info = document.createElement("div");
      info.className = "muted";
      info.textContent = m.points > 0 ? `${m.points} pts · ${fmtTime(m.speech_seconds)}` : "no speech";
      cap.append(date, info);
      box.append(canvas, cap);
      box._draw = () => drawDay(canvas, d, scale);
      return box;
    }));
    for (const box of el.historyGrid.children) box._draw();
    S.historyData = data;
    drawTrends(data);
    renderSessions(data.sessions || []);
  }

  function drawDay(canvas, day, scale) {
    const { ctx, w } = fit(canvas);
    const g = { c: w / 2, r: Math.max(0, w / 2 - 4) };
    g.x = (v) => g.c + v * g.r;
    g.y = (a) => g.c - a * g.r;
    const hm = day.heatmap;
    if (hm && hm.grid && hm.grid.length) {
      const bins = hm.grid.length;
      const flat = new Float64Array(bins * bins);
      for (let r = 0; r < bins; r++) for (let c = 0; c < bins; c++) flat[r * bins + c] = +hm.grid[r][c] || 0;
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(heatImage(flat, bins, scale), g.c - g.r, g.c - g.r, 2 * g.r, 2 * g.r);
    }
    drawFrame(ctx, g, w, { bare: true });
  }

  function drawTrends(data) {
    const days = data.days || [];
    const draw = (canvas, key, colour) => {
      const { ctx, w, h } = fit(canvas);
      const left = 34, right = 10, top = 8, bottom = 20;
      const pw = w - left - right, ph = h - top - bottom;
      const n = Math.max(days.length, 1);
      const X = (i) => left + (n === 1 ? pw / 2 : (i / (n - 1)) * pw);
      const Y = (v) => top + (1 - (Math.max(-1, Math.min(1, v)) + 1) / 2) * ph;
      ctx.font = "11px system-ui, sans-serif";
      ctx.fillStyle = "rgba(139,152,167,0.95)";
      ctx.strokeStyle = "rgba(139,152,167,0.25)";
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      for (const v of [-1, 0, 1]) {
        ctx.beginPath(); ctx.moveTo(left, Y(v)); ctx.lineTo(left + pw, Y(v)); ctx.stroke();
        ctx.fillText(v === 0 ? "0" : (v > 0 ? "+1" : "−1"), left - 6, Y(v));
      }
      ctx.textAlign = "center";
      ctx.textBaseline = "top";
      const every = Math.ceil(n / 8);
      days.forEach((d, i) => {
        if (i % every !== 0 && i !== n - 1) return;
        // The last day gets a label too, unless it would overprint the previous one.
        if (i === n - 1 && i % every !== 0 && X(i) - X(i - i % every) < 1.7 * ctx.measureText(d.date.slice(5)).width) return;
        ctx.textAlign = n > 1 && i === n - 1 ? "right" : (n > 1 && i === 0 ? "left" : "center");
        ctx.fillText(d.date.slice(5), X(i), top + ph + 5);
      });
      // Interval bands and mean line; days without speech leave gaps.
      const stat = (d) => {
        const m = d.metrics && d.metrics.points > 0 ? d.metrics[key] : null;
        if (typeof m === "number") return { mean: m, ci95: null };
        return m && m.mean != null ? m : null;
      };
      ctx.fillStyle = colour + "33";
      ctx.strokeStyle = colour;
      for (let i = 0; i < days.length; i++) {
        const s = stat(days[i]);
        if (!s || !s.ci95 || s.ci95[0] == null || s.ci95[1] == null) continue;
        const half = Math.max(3, pw / n / 3);
        ctx.fillRect(X(i) - half, Y(s.ci95[1]), 2 * half, Y(s.ci95[0]) - Y(s.ci95[1]));
      }
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      let open = false;
      for (let i = 0; i < days.length; i++) {
        const s = stat(days[i]);
        if (!s) { open = false; continue; }
        if (open) ctx.lineTo(X(i), Y(s.mean)); else ctx.moveTo(X(i), Y(s.mean));
        open = true;
      }
      ctx.stroke();
      ctx.fillStyle = colour;
      for (let i = 0; i < days.length; i++) {
        const s = stat(days[i]);
        if (!s) continue;
        ctx.beginPath(); ctx.arc(X(i), Y(s.mean), 3, 0, 2 * Math.PI); ctx.fill();
      }
    };
    draw(el.trendValence, "mean_valence", "#4fb3d9");
    draw(el.trendArousal, "mean_arousal", "#c792ea");
  }

  function renderSessions(sessions) {
    const tbody = el.historySessions.tBodies[0];
    // Times may come as ISO 8601 text or as Unix seconds.
    const toDate = (x) => (x == null ? null : new Date(typeof x === "number" ? x * 1000 : x));
    tbody.replaceChildren(...sessions.map((s) => {
      const tr = document.createElement("tr");
      const started = toDate(s.started_at), ended = toDate(s.ended_at);
      const ok = (d) => d && !isNaN(d.getTime());
      const cells = [
        ok(started) ? started.toLocaleString() : "–",
        typeof s.minutes === "number" ? fmtTime(s.minutes * 60) : (ok(started) && ok(ended) ? fmtTime((ended - started) / 1000) : "–"),
        String(s.points ?? "–"),
        fmtTime(s.speech_seconds),
        fmtSigned(s.mean_valence),
        fmtSigned(s.mean_arousal),
        s.calibration ? (s.calibration.enrolled ? "enrolled" : "uncalibrated") : "–",
      ];
      for (const c of cells) {
        const td = document.createElement("td");
        td.textContent = c;
        tr.append(td);
      }
      return tr;
    }));
  }

  // ---- whose voice counts (issue 14) ---------------------------------------------------------
  /** The voices panel: whose voice counts, each voice's share of speech time, the latest point's attribution. */
  function renderVoices() {
    if (!el.voices) return;
    const sp = (S.hello && S.hello.speakers) || { counting: "all", patient: false, clinician: false };
    let text = sp.counting === "patient" ? "Only the patient's voice is counted." :
      (sp.patient ? "All voices are counted (--count all)." :
        "All voices are counted: no patient voiceprint is enrolled.");
    const secs = (S.status && S.status.speaker_seconds) || {};
    const total = Object.values(secs).reduce((a, b) => a + (Number(b) || 0), 0);
    if (total > 0) {
      text += " Speech time: " + ["patient", "clinician", "unknown"]
        .map((k) => `${k} ${pct((Number(secs[k]) || 0) / total)}`).join(", ") + ".";
    }
    const p = S.lastVoice;
    if (p && p.speaker) {
      const score = typeof p.speaker_score === "number" ? ` (score ${p.speaker_score.toFixed(2)})` : "";
      text += ` Latest segment: ${p.speaker}${score}${p.counted === false ? ", not counted" : ""}.`;
    }
    el.voices.textContent = text;
  }

  /** Other voices' points as a faint layer, only when the checkbox asks for it. */
  function drawOthers(ctx, g) {
    if (!el.showOthers || !el.showOthers.checked || !S.others.length) return;
    ctx.fillStyle = "rgba(160,190,255,0.25)";
    for (const p of S.others.slice(-TRAIL * 4)) {
      ctx.beginPath();
      ctx.arc(g.x(p.valence), g.y(p.arousal), 3, 0, 2 * Math.PI);
      ctx.fill();
    }
  }

  // ---- start -------------------------------------------------------------------------------
  function init() {
    Object.assign(el, {
      conn: $("conn"), sessionInfo: $("session-info"), heat: $("heat-layer"), overlay: $("overlay-layer"),
      legendMax: $("legend-max"), latest: $("latest"), speech: $("speech"), pauseBtn: $("pause-btn"),
      endBtn: $("end-btn"), captureBtn: $("capture-btn"), printBtn: $("print-btn"), calibration: $("calibration"), confMin: $("conf-min"),
      markForm: $("mark-form"), markText: $("mark-text"), markBtn: $("mark-btn"), notice: $("notice"),
      sumSpeech: $("sum-speech"), sumPoints: $("sum-points"), sumValence: $("sum-valence"), sumArousal: $("sum-arousal"),
      quadrants: $("quadrants"), marks: $("marks"), statusLine: $("status-line"), tlValence: $("tl-valence"),
      tlArousal: $("tl-arousal"), viewLive: $("view-live"), viewHistory: $("view-history"), tabLive: $("tab-live"),
      tabHistory: $("tab-history"), historyForm: $("history-form"), historyPatient: $("history-patient"),
      historyDays: $("history-days"), historyMsg: $("history-msg"), historyBody: $("history-body"),
      historyGrid: $("history-grid"), historyLegendMax: $("history-legend-max"), trendValence: $("trend-valence"),
      trendArousal: $("trend-arousal"), historySessions: $("history-sessions"),
    });
    el.voices = $("voices");
    el.showOthers = $("show-others");
    if (el.showOthers) el.showOthers.addEventListener("change", () => schedule("overlay"));
    drawLegend($("legend-bar"));
    drawLegend($("history-legend"));
    el.markForm.addEventListener("submit", submitMark);
    el.endBtn.addEventListener("click", endSession);
    if (CAPTURE && el.captureBtn) {
      el.captureBtn.hidden = false;
      el.captureBtn.addEventListener("click", startCapture);
    }
    el.printBtn.addEventListener("click", () => window.print()); // the print stylesheet keeps the session view
    el.historyPatient.addEventListener("change", () => { if (el.historyPatient.value) loadHistory(); });
    el.confMin.textContent = Math.round(MIN_TRAJECTORY_CONFIDENCE * 100) + "%";
    el.pauseBtn.addEventListener("click", () => send({ type: S.paused ? "resume" : "pause", id: "p" + Date.now() }));
    el.conn.addEventListener("click", () => {
      if (!S.ws && (S.conn === "ended" || S.conn === "offline")) { S.retry = 1; connect(); }
    });
    window.addEventListener("online", () => { if (!S.ws && S.conn !== "ended") { S.retry = 1; connect(); } });
    el.tabLive.addEventListener("click", () => showView("live"));
    el.tabHistory.addEventListener("click", () => showView("history"));
    el.historyForm.addEventListener("submit", loadHistory);
    new ResizeObserver(() => {
      schedule("heat", "overlay", "timelines");
      if (S.view === "history" && S.historyData) {
        for (const box of el.historyGrid.children) if (box._draw) box._draw();
        drawTrends(S.historyData);
      }
    }).observe(document.body);
    renderAll();
    connect();
  }

  // A small handle for debugging in the browser console and for the end-to-end test.
  window.moodDashboard = {
    state: S,
    stats,
    /** Drop the connection as a network failure would; automatic reconnection waits at least `holdMs`. */
    simulateDrop(holdMs = 0) {
      S.holdUntil = Date.now() + holdMs;
      if (S.ws) S.ws.close(4001, "simulated drop");
    },
    /** Let a held reconnection go ahead now. */
    allowReconnect() { S.holdUntil = 0; },
  };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
