"""Which answer an HTTP request on the dashboard's port gets, as a pure function: no socket, no event loop.

Every request comes here first (the page and its assets, the history API, the
websocket handshake), so the access checks sit in one place and are tested
branch by branch without a server: the token (``?token=`` or ``Authorization:
Bearer``), the Host header (on a loopback bind: DNS rebinding), the Origin of
a websocket handshake, and the server's limits. The server turns a decision
into the response (or lets the handshake proceed).
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from monitor.serve.access import ClinicAccess, Clinician
from monitor.serve.config import ServerConfig, is_loopback
from monitor.serve.protocol import dumps
from monitor.serve.rooms import ROOM_PATH, SESSIONS_PATH

STATIC_DIR = Path(__file__).with_name("static")
WS_PATH = "/ws"
HISTORY_PATH = "/api/history"
PATIENTS_PATH = "/api/patients"
#: path -> (file in STATIC_DIR, Content-Type)
STATIC_ROUTES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "/capture-worklet.js": ("capture-worklet.js", "text/javascript; charset=utf-8"),  # a room's microphone
}
_HOST_HEADER = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")
_PAGE_LINK = "open the dashboard with the link the monitor printed (it carries ?token=...)"
_NO_STORE = "history is not available: this monitor keeps no store (started with --no-store)"

Query = dict[str, list[str]]
HeaderList = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class HttpRequest:
    """What the router looks at: method, path with query, and the headers as sent (names in any case)."""

    method: str
    target: str
    headers: HeaderList = ()

    def header(self, name: str) -> str | None:
        """One header's value; a repeated header counts as its first value (never an exception)."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


@dataclass(frozen=True)
class ServePage:
    """200 with a bundled file; the page itself has the token filled in and carries a Content-Security-Policy."""

    body: bytes
    content_type: str
    headers: HeaderList = ()


@dataclass(frozen=True)
class QueryHistory:
    """The history API with checked parameters; the server answers it from its store, off the loop."""

    patient: str
    days: int


@dataclass(frozen=True)
class QueryPatients:
    """The patients the store knows (the History view's picker); answered from the store, off the loop."""


@dataclass(frozen=True)
class QuerySessions:
    """The clinic's running sessions that this clinician may see."""

    clinician: Clinician


@dataclass(frozen=True)
class AcceptWebsocket:
    """Let the websocket handshake go ahead."""


@dataclass(frozen=True)
class Refuse:
    """An error answer. ``audit``: a failed access check (token, Host, Origin), counted and logged by the server."""

    status: HTTPStatus
    reason: str
    json: bool = False
    audit: bool = False
    headers: HeaderList = ()

    def render(self) -> tuple[bytes, str]:
        """(body, Content-Type): JSON for the API, a line of text otherwise."""
        if self.json:
            return dumps({"error": self.reason}).encode(), "application/json"
        text = f"{self.status.value} {self.status.phrase}: {self.reason}" if self.audit else self.reason
        return (text + "\n").encode(), "text/plain; charset=utf-8"


Decision = ServePage | QueryHistory | QueryPatients | QuerySessions | AcceptWebsocket | Refuse


def load_pages(folder: Path = STATIC_DIR) -> dict[str, bytes]:
    """The bundled page and assets, read once: they are served from memory."""
    return {name: (folder / name).read_bytes() for name, _ in set(STATIC_ROUTES.values())}


def csp(host: str) -> str:
    """The page's Content-Security-Policy: scripts and styles from the monitor only, websockets to this host."""
    return ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"connect-src 'self' ws://{host} wss://{host}; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")


class Router:
    """Decides every request; ``history``: whether a store backs the history API.

    ``access`` (the clinic's server): tokens of clinicians, each seeing their own patients; rooms may then
    stream audio on ``/room`` and the running sessions are listed on ``/api/sessions``. Without it the one
    ``token`` opens everything, as the one-room monitor's dashboard does.
    """

    def __init__(self, config: ServerConfig, token: str, pages: Mapping[str, bytes], history: bool,
                 access: ClinicAccess | None = None) -> None:
        self.config = config
        self.pages = pages
        self.history = history
        self.rooms = access is not None
        self.access = access if access is not None else ClinicAccess.single_token(token)[0]

    def route(self, request: HttpRequest, *, accepting: bool = True, clients: int = 0) -> Decision:
        """The decision for one request; ``accepting``/``clients``: whether and how full the server takes websockets."""
        if request.method != "GET":  # websockets >= 16 also parses other methods
            return Refuse(HTTPStatus.METHOD_NOT_ALLOWED, "only GET is supported", headers=(("Allow", "GET"),))
        url = urlsplit(request.target)
        query = parse_qs(url.query, keep_blank_values=True)
        host = request.header("Host") or ""
        if not self.host_ok(host):
            return Refuse(HTTPStatus.MISDIRECTED_REQUEST, "unexpected Host header", audit=True)
        upgrade = "websocket" in (request.header("Upgrade") or "").lower()
        if url.path == WS_PATH or (self.rooms and url.path == ROOM_PATH):
            return self._websocket(request, query, host, upgrade, accepting, clients)
        if upgrade:
            return Refuse(HTTPStatus.NOT_FOUND, f"websocket endpoint is {WS_PATH}")
        if self.rooms and url.path == SESSIONS_PATH:
            clinician = self.principal(request, query)
            if clinician is None:
                return Refuse(HTTPStatus.FORBIDDEN, "wrong or missing token", json=True, audit=True)
            return QuerySessions(clinician)
        if url.path in STATIC_ROUTES:
            return self._page(url.path, request, query, host)
        if url.path == HISTORY_PATH:
            return self._history(request, query)
        if url.path == PATIENTS_PATH:
            return self._patients(request, query)
        return Refuse(HTTPStatus.NOT_FOUND, "not found")

    def _websocket(self, request: HttpRequest, query: Query, host: str, upgrade: bool, accepting: bool,
                   clients: int) -> Decision:
        if not upgrade:
            return Refuse(HTTPStatus.UPGRADE_REQUIRED, "this address is the dashboard's websocket")
        if not self.token_ok(request, query):
            return Refuse(HTTPStatus.FORBIDDEN, "wrong or missing token", audit=True)
        origin = request.header("Origin")
        if origin is not None and not self.origin_ok(origin, host):
            return Refuse(HTTPStatus.FORBIDDEN, f"origin {origin[:80]!r} not allowed", audit=True)
        if not accepting:
            return Refuse(HTTPStatus.SERVICE_UNAVAILABLE, "the session has ended")
        if clients >= self.config.max_clients:
            return Refuse(HTTPStatus.SERVICE_UNAVAILABLE, "too many dashboard clients")
        return AcceptWebsocket()

    def _page(self, path: str, request: HttpRequest, query: Query, host: str) -> Decision:
        if not self.token_ok(request, query):
            return Refuse(HTTPStatus.FORBIDDEN, _PAGE_LINK, audit=True)
        name, content_type = STATIC_ROUTES[path]
        body = self.pages[name]
        if name != "index.html":
            return ServePage(body, content_type)
        # The page links its assets and websocket with the token it was opened with (each clinician's own);
        # escaped for the HTML attribute it lands in.
        token = html.escape(quote(self.presented_token(request, query) or "", safe=""), quote=True).encode()
        return ServePage(body.replace(b"__TOKEN__", token), content_type, (("Content-Security-Policy", csp(host)),))

    def _history(self, request: HttpRequest, query: Query) -> Decision:
        if not self.token_ok(request, query):
            return Refuse(HTTPStatus.FORBIDDEN, "wrong or missing token", json=True, audit=True)
        if not self.history:
            return Refuse(HTTPStatus.NOT_FOUND, _NO_STORE, json=True)
        patient = (query.get("patient", [""])[0] or "").strip()
        if not patient or len(patient) > 128 or not patient.isprintable():
            return Refuse(HTTPStatus.BAD_REQUEST, "give ?patient=ID (1-128 printable characters)", json=True)
        try:
            days = int(query.get("days", ["14"])[0])
        except ValueError:
            days = 0
        if not 1 <= days <= 366:
            return Refuse(HTTPStatus.BAD_REQUEST, "days must be a whole number from 1 to 366", json=True)
        return QueryHistory(patient, days)

    def _patients(self, request: HttpRequest, query: Query) -> Decision:
        """Like the history: the token first (patient ids are clinical data), then whether a store backs it."""
        if not self.token_ok(request, query):
            return Refuse(HTTPStatus.FORBIDDEN, "wrong or missing token", json=True, audit=True)
        if not self.history:
            return Refuse(HTTPStatus.NOT_FOUND, _NO_STORE, json=True)
        return QueryPatients()

    # ---- the checks --------------------------------------------------------------------------
    @staticmethod
    def presented_token(request: HttpRequest, query: Query | None = None) -> str | None:
        """``?token=`` first, else ``Authorization: Bearer``."""
        if query is None:
            query = parse_qs(urlsplit(request.target).query, keep_blank_values=True)
        given = query.get("token", [None])[0]
        auth = request.header("Authorization") or ""
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return given

    def principal(self, request: HttpRequest, query: Query | None = None) -> Clinician | None:
        """Whose token the request carries (compared in constant time), or None."""
        return self.access.who(self.presented_token(request, query))

    def token_ok(self, request: HttpRequest, query: Query) -> bool:
        return self.principal(request, query) is not None

    def host_ok(self, host: str) -> bool:
        """Refuse odd Host headers, and on a loopback bind any name but the loopback ones (DNS rebinding)."""
        if not host or not _HOST_HEADER.match(host):
            return False
        if not is_loopback(self.config.host):
            return True
        name = host[1:host.index("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
        return is_loopback(name.lower()) or name.lower() == self.config.host.lower()

    def origin_ok(self, origin: str, host: str) -> bool:
        """Same origin only (plus configured extras): another site's page must not open our websocket."""
        scheme = "https" if self.config.tls else "http"
        if origin.lower() == f"{scheme}://{host}".lower():
            return True
        return origin in self.config.allowed_origins
