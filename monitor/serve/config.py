"""The dashboard server's settings, kept apart so the router, the hub and the server share one definition."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


@dataclass
class ServerConfig:
    """Where and how the dashboard is served.

    token: required by the page, the websocket and the API; a random one is made (and printed) if None.
    linger_s: keep serving this long after the session ends, so the last state stays on screen.
    client_queue_messages / client_queue_bytes: how far a client may fall behind before it is disconnected.
    socket_send_buffer: kernel send buffer per websocket (bytes); bounded so that a stalled client shows up
        in its queue (and gets disconnected) instead of hiding megabytes in the kernel. None = OS default.
    max_message_bytes: largest client message; a bigger one closes that client's connection (code 1009).
    """

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    allowed_origins: tuple[str, ...] = ()
    linger_s: float = 0.0
    heatmap_hz: float = 2.0
    max_clients: int = 100
    client_queue_messages: int = 2000
    client_queue_bytes: int = 16 * 2**20
    max_message_bytes: int = 16 * 1024
    client_messages_per_s: float = 20.0
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0
    snapshot_points: int = 5000
    max_marks: int = 2000
    inbox_size: int = 10_000
    flush_timeout_s: float = 3.0
    socket_send_buffer: int | None = 256 * 1024

    def __post_init__(self) -> None:
        if not 0 <= int(self.port) <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if bool(self.certfile) != bool(self.keyfile):
            raise ValueError("TLS needs both --certfile and --keyfile")
        if self.heatmap_hz <= 0:
            raise ValueError("heatmap_hz must be positive")
        if self.linger_s < 0:
            raise ValueError("linger must be >= 0 seconds")
        if self.token is not None and not self.token.strip():
            raise ValueError("the token must not be empty")

    @property
    def tls(self) -> bool:
        return bool(self.certfile)


def is_loopback(host: str) -> bool:
    """Whether a bind address or Host name stays on this computer (decides the warnings and the Host check)."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
