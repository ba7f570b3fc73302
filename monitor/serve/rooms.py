"""The room protocol: how a room streams audio to the clinic's server and resumes after a dropped connection.

Kept apart from the server so the wire format lives in one small, testable
place (docs/protocol.md, "Rooms"). A room opens ``/room`` on the server's
port (token as for the dashboard), says ``room_hello`` and then sends audio
as binary messages; the same connection receives the session's dashboard
stream (``hello``, ``snapshot``, ``point``…), so a browser page that captures
the microphone draws its own session from it. Every binary message is::

    uint32 little-endian sequence number | int16 little-endian mono PCM at 16 kHz

The server acknowledges each chunk with ``audio_ack``; a room keeps what is
not yet acknowledged and, after a reconnect (``room_hello`` with its
``session``), re-sends from the ``next_seq`` that ``room_ready`` names. A
chunk below ``next_seq`` is a duplicate (dropped, acknowledged again); one
above it is a gap (refused: the room must re-send from ``next_seq``). So a
dropped connection loses no audio and duplicates none.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitor.model.audio_format import SAMPLE_RATE
from monitor.serve.protocol import ProtocolError

ROOM_PROTOCOL_VERSION = 1
ROOM_PATH = "/room"
SESSIONS_PATH = "/api/sessions"
#: Audio formats a room may send. Browsers resample to 16 kHz themselves (an AudioContext at 16 kHz).
AUDIO_FORMATS = ("pcm16",)
HEADER = struct.Struct("<I")
#: Largest audio chunk: two seconds of 16 kHz int16 (rooms send about 100 ms).
MAX_CHUNK_SAMPLES = 2 * SAMPLE_RATE
_ID_MAX = 128


@dataclass(frozen=True)
class RoomHello:
    """A room's first message: whose session, and (resuming) which one."""

    patient: str
    room: str = ""
    clinician: str | None = None
    session: str | None = None
    audio_format: str = "pcm16"


def encode_chunk(seq: int, pcm: np.ndarray) -> bytes:
    """One binary audio message (what room clients send)."""
    return HEADER.pack(seq & 0xFFFFFFFF) + np.asarray(pcm, dtype="<i2").tobytes()


def decode_chunk(data: bytes) -> tuple[int, np.ndarray]:
    """(sequence number, int16 samples) of one binary message; ``ProtocolError`` when it is malformed."""
    if len(data) < HEADER.size + 2 or (len(data) - HEADER.size) % 2:
        raise ProtocolError("bad_audio", "an audio message is a 4-byte sequence number and int16 samples")
    if (len(data) - HEADER.size) // 2 > MAX_CHUNK_SAMPLES:
        raise ProtocolError("bad_audio", f"an audio message holds at most {MAX_CHUNK_SAMPLES} samples")
    (seq,) = HEADER.unpack_from(data)
    return int(seq), np.frombuffer(data, dtype="<i2", offset=HEADER.size).astype(np.int16)


def _identifier(value: Any, name: str, required: bool) -> str | None:
    if value is None or value == "":
        if required:
            raise ProtocolError("bad_field", f"'{name}' is required")
        return None
    if not isinstance(value, str) or len(value) > _ID_MAX or not value.isprintable():
        raise ProtocolError("bad_field", f"'{name}' must be 1-{_ID_MAX} printable characters")
    return value


def parse_room_hello(raw: str | bytes) -> RoomHello:
    """Check a room's ``room_hello``; every problem is a ``ProtocolError`` the server sends back."""
    if isinstance(raw, bytes):
        raise ProtocolError("bad_message", "say room_hello (a JSON text message) before sending audio")
    try:
        msg = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("bad_json", f"not JSON: {exc}") from exc
    if not isinstance(msg, dict) or msg.get("type") != "room_hello":
        raise ProtocolError("bad_message", "the first message must be {\"type\": \"room_hello\", ...}")
    version = msg.get("version", ROOM_PROTOCOL_VERSION)
    if version != ROOM_PROTOCOL_VERSION:
        raise ProtocolError("bad_version", f"this server speaks room protocol {ROOM_PROTOCOL_VERSION}, not {version!r}")
    audio_format = msg.get("format", "pcm16")
    if audio_format not in AUDIO_FORMATS:
        raise ProtocolError("bad_field", f"'format' must be one of {', '.join(AUDIO_FORMATS)}")
    if msg.get("sample_rate", SAMPLE_RATE) != SAMPLE_RATE:
        raise ProtocolError("bad_field", f"'sample_rate' must be {SAMPLE_RATE} (mono int16)")
    patient = _identifier(msg.get("patient"), "patient", required=True)
    assert patient is not None
    return RoomHello(patient=patient, room=_identifier(msg.get("room"), "room", required=False) or "",
                     clinician=_identifier(msg.get("clinician"), "clinician", required=False),
                     session=_identifier(msg.get("session"), "session", required=False), audio_format=audio_format)


def is_room_end(raw: str | bytes) -> bool:
    """Whether a text message is ``room_end`` (the room has no more audio; the session finishes)."""
    if isinstance(raw, bytes):
        return False
    try:
        msg = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    return isinstance(msg, dict) and msg.get("type") == "room_end"
