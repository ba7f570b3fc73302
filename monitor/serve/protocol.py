"""The dashboard's websocket protocol: building server messages and checking client ones.

Kept apart from the server so the wire format is in one small, testable place
and docs/protocol.md can be checked against it. Every message is one JSON
object with a ``type``; version ``PROTOCOL_VERSION`` is announced in ``hello``.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from calibration.jsonable import to_jsonable
from calibration.quadrants import QUADRANTS, quadrant

if TYPE_CHECKING:  # pragma: no cover
    from monitor.live.events import Mark, Point, Status
    from monitor.live.heatmap import HeatmapSnapshot

PROTOCOL_VERSION = 2

#: Message types a client may send.
CLIENT_TYPES = ("mark", "pause", "resume", "ping", "mark_edit", "mark_delete", "end_session")

#: Longest mark text accepted, in characters (a note, not a transcript).
MAX_MARK_CHARS = 500

#: Longest client-chosen request id echoed back.
MAX_ID_CHARS = 64

#: Largest magnitude of a number a client may send (an integer id, a ping's ``t``): what a browser's
#: numbers hold exactly (2**53). Bigger ones are refused as ``bad_field``, never converted.
MAX_CLIENT_NUMBER = 2**53

#: The latest session time a mark may carry, whatever the session's clock says: 30 days of audio.
#: The server also refuses marks later than the session's elapsed time (``DashboardServer``).
MAX_SESSION_SECONDS = 30 * 86_400.0

#: Close codes used by the server (besides the library's own 1009 for oversize messages).
CLOSE_SESSION_ENDED = 1001  # "going away": the session is over, the server is shutting down
CLOSE_TOO_SLOW = 1008  # policy violation: the client fell too far behind


class ProtocolError(ValueError):
    """A client message the server cannot act on; becomes an ``error`` reply, never a disconnect."""

    def __init__(self, code: str, message: str, ref: Any = None):
        super().__init__(message)
        self.code = code
        self.ref = ref


def dumps(obj: dict[str, Any]) -> str:
    """Compact JSON; NaN/inf become null so every browser's JSON.parse accepts it."""
    return json.dumps(to_jsonable(obj), separators=(",", ":"), allow_nan=False)


# ---- server -> client ---------------------------------------------------------------------

def point_body(point: Point) -> dict[str, Any]:
    """A ``monitor.live.events.Point`` as the wire's point fields (also the items of ``snapshot.points``).

    ``speaker``, ``speaker_score`` and ``counted`` are there only for an attributed point: a session without a
    patient voiceprint sends the same bytes as before (a 5000-point snapshot stays about 1 MB).
    """
    body = {
        "index": int(point.index),
        "t_start": round(float(point.t_start), 3),
        "t_end": round(float(point.t_end), 3),
        "valence": round(float(point.valence), 4),
        "arousal": round(float(point.arousal), 4),
        "confidence": round(float(point.confidence), 4),
        "probabilities": {str(k): round(float(v), 4) for k, v in point.probabilities.items()},
        "latency_ms": round(float(point.latency_ms), 1),
        "wall_time": round(float(point.wall_time), 3),
    }
    if point.speaker is not None:
        body["speaker"] = point.speaker
        body["speaker_score"] = None if point.speaker_score is None else round(float(point.speaker_score), 4)
        body["counted"] = bool(point.counted)
    return body


def mark_body(mark: Mark) -> dict[str, Any]:
    return {"t": round(float(mark.t), 3), "text": mark.text, "wall_time": round(float(mark.wall_time), 3),
            "source": mark.source}


def heatmap_body(snapshot: HeatmapSnapshot, seq: int) -> dict[str, Any]:
    """Compact heat map frame: the grid scaled to 0..255 (uint8, row-major, arousal rows bottom-up) in base64.

    A 48x48 grid is ~3 KB instead of ~25 KB of JSON numbers; ``max`` restores
    the absolute scale (weight = value / 255 * max).
    """
    grid = np.asarray(snapshot.grid, dtype=np.float64)
    peak = float(grid.max()) if grid.size else 0.0
    if peak <= 0:
        scaled = np.zeros(grid.shape, dtype=np.uint8)
    else:
        scaled = np.rint(grid / peak * 255.0).clip(0, 255).astype(np.uint8)
    return {
        "seq": seq,
        "t": round(float(snapshot.t), 3),
        "bins": int(grid.shape[0]),
        "encoding": "u8-base64",
        "data": base64.b64encode(scaled.tobytes()).decode("ascii"),
        "max": peak,
        "total_weight": float(snapshot.total_weight),
        "points": int(snapshot.points),
    }


def decode_heatmap(body: dict[str, Any]) -> np.ndarray:
    """The inverse of :func:`heatmap_body` (for tests and other Python clients): weights as a [bins, bins] array."""
    raw = np.frombuffer(base64.b64decode(body["data"]), dtype=np.uint8).astype(np.float64)
    bins = int(body["bins"])
    return raw.reshape(bins, bins) / 255.0 * float(body["max"] or 0.0)


def status_body(status: Status) -> dict[str, Any]:
    s = status.to_dict()
    return {
        "t": round(float(s["t"]), 3),
        "speech_active": bool(s["speech_active"]),
        "paused": bool(s["paused"]),
        "queues": {"frames": s["frame_queue"], "segments": s["segment_queue"], "results": s["result_queue"]},
        "dropped_frames": s["dropped_frames"],
        "failed_segments": s["failed_segments"],
        "segments": s["segments"],
        "nonspeech_segments": s["nonspeech_segments"],
        "points": s["points"],
        "device": s["device"],
        "speaker_seconds": {str(k): round(float(v), 3) for k, v in s["speaker_seconds"].items()},
    }


def message(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields}


def error(code: str, text: str, ref: Any = None) -> dict[str, Any]:
    return message("error", code=code, message=text, id=ref)


@dataclass
class SessionSummary:
    """Running totals over every point of the session (not just the ones a snapshot carries).

    A point weighs its segment duration x confidence, as in the heat map and
    in the history's daily metrics, so the live numbers and the history agree;
    ``speech_seconds`` is plain segment time.
    """

    points: int = 0
    speech_seconds: float = 0.0
    weight: float = 0.0
    _sum_v: float = 0.0
    _sum_a: float = 0.0
    _quadrant_w: dict[str, float] = field(default_factory=lambda: dict.fromkeys(QUADRANTS, 0.0))

    def add(self, valence: float, arousal: float, duration: float, confidence: float = 1.0) -> None:
        d = max(float(duration), 0.0)
        w = d * max(float(confidence), 0.0)
        self.points += 1
        self.speech_seconds += d
        self.weight += w
        self._sum_v += w * valence
        self._sum_a += w * arousal
        self._quadrant_w[quadrant(valence, arousal)] += w

    def to_dict(self) -> dict[str, Any]:
        total = self.weight
        return {
            "points": self.points,
            "speech_seconds": round(self.speech_seconds, 3),
            "weight": round(total, 4),
            "mean_valence": round(self._sum_v / total, 4) if total > 0 else None,
            "mean_arousal": round(self._sum_a / total, 4) if total > 0 else None,
            "quadrant_share": {k: round(v / total, 4) if total > 0 else 0.0 for k, v in self._quadrant_w.items()},
        }


# ---- client -> server ---------------------------------------------------------------------

def parse_client_message(raw: str | bytes) -> dict[str, Any]:
    """Check one client message; returns a normalised dict or raises :class:`ProtocolError`."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raise ProtocolError("binary_unsupported", "send JSON text messages, not binary")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise ProtocolError("bad_json", "message is not valid JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_message", "message must be a JSON object")
    ref = data.get("id")
    if ref is not None and not (isinstance(ref, str) and len(ref) <= MAX_ID_CHARS) and not (
            isinstance(ref, int) and not isinstance(ref, bool) and abs(ref) <= MAX_CLIENT_NUMBER):
        raise ProtocolError("bad_field", f"'id' must be a string of at most {MAX_ID_CHARS} characters or an integer "
                                         f"of at most {MAX_CLIENT_NUMBER} in size")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_message", "message has no 'type'", ref)
    if kind not in CLIENT_TYPES:
        raise ProtocolError("unknown_type", f"unknown message type {kind[:40]!r}; expected one of {list(CLIENT_TYPES)}",
                            ref)
    out: dict[str, Any] = {"type": kind, "id": ref}
    if kind == "mark":
        out["text"] = _mark_text(data.get("text"), ref)
        out["t"] = _optional_time(data.get("t"), ref)
    elif kind in ("mark_edit", "mark_delete"):
        out.update(_mark_change(data, kind, ref))
    elif kind == "ping":
        t = data.get("t")
        if t is not None and not _is_number(t):
            raise ProtocolError("bad_field", f"'t' must be a number of at most {MAX_CLIENT_NUMBER} in size", ref)
        out["t"] = t
    return out


def _mark_change(data: dict[str, Any], kind: str, ref: Any) -> dict[str, Any]:
    """A mark is named by its session time and wall time, as the server sent them (marks have no id)."""
    t = _optional_time(data.get("t"), ref)
    wall_time: Any = data.get("wall_time")
    if t is None or not _is_number(wall_time) or wall_time < 0:
        raise ProtocolError("bad_field", "give the mark's 't' and 'wall_time' as the server sent them", ref)
    out: dict[str, Any] = {"t": t, "wall_time": float(wall_time)}
    if kind == "mark_edit":
        out["text"] = _mark_text(data.get("text"), ref)
    return out


def _mark_text(text: Any, ref: Any) -> str:
    """A mark's text, trimmed and without control characters; 1 to MAX_MARK_CHARS characters."""
    if not isinstance(text, str):
        raise ProtocolError("bad_field", "'text' must be a string", ref)
    clean = "".join(ch for ch in text if ch.isprintable() or ch == " ").strip()
    if not clean:
        raise ProtocolError("bad_field", "'text' is empty", ref)
    if len(clean) > MAX_MARK_CHARS:
        raise ProtocolError("bad_field", f"'text' is longer than {MAX_MARK_CHARS} characters", ref)
    return clean


def _is_number(x: Any) -> bool:
    """A finite JSON number no bigger than :data:`MAX_CLIENT_NUMBER` (a huge integer is not converted to float)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    if isinstance(x, int):
        return abs(x) <= MAX_CLIENT_NUMBER
    return math.isfinite(x) and abs(x) <= MAX_CLIENT_NUMBER


def _optional_time(t: Any, ref: Any) -> float | None:
    if t is None:
        return None
    if not _is_number(t) or not 0 <= t <= MAX_SESSION_SECONDS:
        raise ProtocolError("bad_field", "'t' must be a session time in seconds (a number from 0 to "
                                         f"{MAX_SESSION_SECONDS:.0f})", ref)
    return float(t)
