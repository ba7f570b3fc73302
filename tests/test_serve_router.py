"""The dashboard's HTTP router, without a socket or an event loop: every branch of every decision.

``Router.route`` is what stands between the network and the session's data
(token, Host, Origin, limits), so each refusal is checked here for its status,
its reason, whether it is counted as a refused request (``audit``) and its body.
The live server's use of it is covered by tests/test_server_protocol.py.
"""

from __future__ import annotations

import json
from http import HTTPStatus

import pytest

from monitor.serve.config import ServerConfig, is_loopback
from monitor.serve.router import (
    HISTORY_PATH,
    STATIC_ROUTES,
    WS_PATH,
    AcceptWebsocket,
    HttpRequest,
    QueryHistory,
    Refuse,
    Router,
    ServePage,
    csp,
    load_pages,
)

TOKEN = "s3cret-token"
HOST = "127.0.0.1:8765"
PAGES = {
    "index.html": b'<script src="dashboard.js?token=__TOKEN__"></script><a data-token="__TOKEN__">',
    "dashboard.js": b"console.log('js');",
    "dashboard.css": b"body {}",
}
UPGRADE = (("Upgrade", "websocket"), ("Connection", "Upgrade"))


def make_router(history: bool = True, token: str = TOKEN, **config) -> Router:
    return Router(ServerConfig(**config), token, PAGES, history=history)


def get(target: str, *headers: tuple[str, str], host: str | None = HOST, method: str = "GET") -> HttpRequest:
    return HttpRequest(method, target, ((("Host", host),) if host is not None else ()) + tuple(headers))


def refusal(decision: object, status: HTTPStatus, audit: bool) -> Refuse:
    assert isinstance(decision, Refuse), decision
    assert (decision.status, decision.audit) == (status, audit), decision
    return decision


# ---- the request ---------------------------------------------------------------------------------

def test_headers_are_case_insensitive_and_a_repeated_one_counts_once():
    req = HttpRequest("GET", "/", (("host", "a"), ("HOST", "b"), ("X-Other", "c")))
    assert req.header("Host") == "a" and req.header("x-other") == "c" and req.header("Origin") is None


# ---- method and Host -------------------------------------------------------------------------------

def test_only_get_is_allowed():
    r = refusal(make_router().route(get(f"/?token={TOKEN}", method="POST")), HTTPStatus.METHOD_NOT_ALLOWED, False)
    assert r.headers == (("Allow", "GET"),)
    assert r.render() == (b"only GET is supported\n", "text/plain; charset=utf-8")


@pytest.mark.parametrize("host", [None, "", "evil host", "a/b", "127.0.0.1:99999999", "[::1", "evil.example",
                                  "evil.example:8765", "127.0.0.1.evil.example"])
def test_odd_or_foreign_host_is_refused_on_a_loopback_bind(host):
    r = refusal(make_router().route(get(f"/?token={TOKEN}", host=host)), HTTPStatus.MISDIRECTED_REQUEST, True)
    assert r.render()[0] == b"421 Misdirected Request: unexpected Host header\n"


@pytest.mark.parametrize("host", ["localhost", "localhost:8765", "LOCALHOST:1", "127.0.0.1", HOST, "127.0.0.5:80",
                                  "[::1]", "[::1]:8765"])
def test_loopback_names_pass_the_host_check(host):
    assert isinstance(make_router().route(get(f"/?token={TOKEN}", host=host)), ServePage)


def test_host_check_follows_the_bind():
    # A loopback bind under a name of its own accepts that name (and the loopback ones), nothing else.
    named = make_router(host="::1")
    assert named.host_ok("[::1]:8765") and named.host_ok("localhost") and not named.host_ok("example.org")
    # A network bind: the computer's names and addresses are unknown, any well-formed Host will do.
    public = make_router(host="0.0.0.0")
    assert public.host_ok("tablet-lan.local:8765") and public.host_ok("192.168.1.20:8765")
    assert not public.host_ok("bad host") and not public.host_ok("")
    assert is_loopback("127.0.0.2") and is_loopback("[::1]") and not is_loopback("0.0.0.0")


# ---- the token ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("target, headers, ok", [
    (f"/?token={TOKEN}", (), True),
    ("/", (("Authorization", f"Bearer {TOKEN}"),), True),
    ("/", (("Authorization", f"bearer   {TOKEN} "),), True),
    ("/", (), False),
    ("/?token=", (), False),
    ("/?token=wrong", (), False),
    (f"/?token={TOKEN}x", (), False),
    (f"/?token={TOKEN[:-1]}", (), False),
    ("/?token=wrong", (("Authorization", f"Bearer {TOKEN}"),), False),  # the query token, when given, decides
    ("/", (("Authorization", f"Basic {TOKEN}"),), False),
    ("/", (("Authorization", TOKEN),), False),
])
def test_token_by_query_or_bearer_header(target, headers, ok):
    decision = make_router().route(get(target, *headers))
    assert isinstance(decision, ServePage) is ok
    if not ok:
        r = refusal(decision, HTTPStatus.FORBIDDEN, True)
        assert b"link the monitor printed" in r.render()[0]


# ---- the page and its assets ------------------------------------------------------------------------------

def test_page_gets_the_token_and_a_content_security_policy():
    decision = make_router().route(get(f"/?token={TOKEN}"))
    assert isinstance(decision, ServePage) and decision.content_type.startswith("text/html")
    assert decision.body.count(TOKEN.encode()) == 2 and b"__TOKEN__" not in decision.body
    assert decision.headers == (("Content-Security-Policy", csp(HOST)),)
    assert f"connect-src 'self' ws://{HOST} wss://{HOST}" in csp(HOST) and "script-src 'self'" in csp(HOST)
    assert make_router().route(get(f"/index.html?token={TOKEN}")) == decision


def test_token_is_escaped_into_the_page():
    token = 'a&b"<c> d'
    decision = make_router(token=token).route(get("/", ("Authorization", f"Bearer {token}")))
    assert isinstance(decision, ServePage)
    assert b'dashboard.js?token=a%26b%22%3Cc%3E%20d"' in decision.body and token.encode() not in decision.body


@pytest.mark.parametrize("path, kind", [("/dashboard.js", "javascript"), ("/dashboard.css", "css")])
def test_assets_are_served_as_they_are(path, kind):
    decision = make_router().route(get(f"{path}?token={TOKEN}"))
    assert isinstance(decision, ServePage) and kind in decision.content_type
    assert decision.body == PAGES[STATIC_ROUTES[path][0]] and decision.headers == ()


def test_the_bundled_files_are_all_there():
    pages = load_pages()
    assert set(pages) == {name for name, _ in STATIC_ROUTES.values()}
    assert b"__TOKEN__" in pages["index.html"] and all(len(body) > 100 for body in pages.values())


def test_unknown_path_is_not_found():
    r = refusal(make_router().route(get(f"/nothing-here?token={TOKEN}")), HTTPStatus.NOT_FOUND, False)
    assert r.render() == (b"not found\n", "text/plain; charset=utf-8")
    refusal(make_router().route(get("/nothing-here")), HTTPStatus.NOT_FOUND, False)  # a 404 needs no token


# ---- the websocket handshake ---------------------------------------------------------------------------------

def ws(router: Router, *headers: tuple[str, str], target: str = f"{WS_PATH}?token={TOKEN}", accepting: bool = True,
       clients: int = 0) -> object:
    return router.route(get(target, *UPGRADE, *headers), accepting=accepting, clients=clients)


def test_websocket_accepted_with_the_token_and_no_or_the_same_origin():
    router = make_router()
    assert ws(router) == AcceptWebsocket()
    assert ws(router, ("Origin", f"http://{HOST}")) == AcceptWebsocket()
    assert ws(router, ("Origin", f"HTTP://{HOST.upper()}")) == AcceptWebsocket()
    assert ws(router, ("Authorization", f"Bearer {TOKEN}"), target=WS_PATH) == AcceptWebsocket()


def test_websocket_path_without_an_upgrade_says_so():
    r = refusal(make_router().route(get(f"{WS_PATH}?token={TOKEN}")), HTTPStatus.UPGRADE_REQUIRED, False)
    assert r.render()[0] == b"this address is the dashboard's websocket\n"


@pytest.mark.parametrize("target", [WS_PATH, f"{WS_PATH}?token=", f"{WS_PATH}?token=wrong"])
def test_websocket_refuses_a_wrong_or_missing_token(target):
    r = refusal(ws(make_router(), target=target), HTTPStatus.FORBIDDEN, True)
    assert r.reason == "wrong or missing token"


@pytest.mark.parametrize("origin", ["http://evil.example", f"https://{HOST}", "http://localhost:8765", "null", ""])
def test_websocket_refuses_a_foreign_origin(origin):
    r = refusal(ws(make_router(), ("Origin", origin)), HTTPStatus.FORBIDDEN, True)
    assert r.reason.startswith("origin") and r.reason.endswith("not allowed")


def test_websocket_origin_follows_tls_and_the_allowed_list():
    tls = make_router(certfile="c.pem", keyfile="k.pem")
    assert ws(tls, ("Origin", f"https://{HOST}")) == AcceptWebsocket()
    refusal(ws(tls, ("Origin", f"http://{HOST}")), HTTPStatus.FORBIDDEN, True)
    extra = make_router(allowed_origins=("https://portal.clinic.example",))
    assert ws(extra, ("Origin", "https://portal.clinic.example")) == AcceptWebsocket()
    refusal(ws(extra, ("Origin", "https://other.clinic.example")), HTTPStatus.FORBIDDEN, True)
    long_origin = "http://" + "x" * 500
    assert len(refusal(ws(extra, ("Origin", long_origin)), HTTPStatus.FORBIDDEN, True).reason) < 120


def test_websocket_refused_while_shutting_down_or_full():
    router = make_router(max_clients=3)
    r = refusal(ws(router, accepting=False), HTTPStatus.SERVICE_UNAVAILABLE, False)
    assert r.render()[0] == b"the session has ended\n"
    assert ws(router, clients=2) == AcceptWebsocket()
    r = refusal(ws(router, clients=3), HTTPStatus.SERVICE_UNAVAILABLE, False)
    assert r.render()[0] == b"too many dashboard clients\n"
    # Access is checked before capacity: a stranger learns nothing about the session's state.
    refusal(ws(router, target=WS_PATH, accepting=False, clients=3), HTTPStatus.FORBIDDEN, True)


def test_upgrade_on_another_path_points_to_the_websocket():
    r = refusal(make_router().route(get(f"/?token={TOKEN}", *UPGRADE)), HTTPStatus.NOT_FOUND, False)
    assert r.render()[0] == f"websocket endpoint is {WS_PATH}\n".encode()


# ---- the history API ----------------------------------------------------------------------------------------

def history(query: str, router: Router | None = None, token: bool = True) -> object:
    target = f"{HISTORY_PATH}?{query}" + (f"&token={TOKEN}" if token else "")
    return (router or make_router()).route(get(target))


def json_error(decision: object, status: HTTPStatus, audit: bool = False) -> str:
    r = refusal(decision, status, audit)
    body, content_type = r.render()
    assert content_type == "application/json"
    message = json.loads(body)["error"]
    assert message == r.reason
    return str(message)


def test_history_query_with_defaults_and_limits():
    assert history("patient=p1") == QueryHistory("p1", 14)
    assert history("patient=%20p%20one%20&days=30") == QueryHistory("p one", 30)
    assert history("patient=p1&days=1") == QueryHistory("p1", 1)
    assert history("patient=p1&days=366") == QueryHistory("p1", 366)
    assert history("patient=" + "x" * 128) == QueryHistory("x" * 128, 14)
    assert make_router().route(get(f"{HISTORY_PATH}?patient=p1", ("Authorization", f"Bearer {TOKEN}"))) == \
        QueryHistory("p1", 14)


def test_history_needs_the_token_then_a_store():
    assert json_error(history("patient=p1", token=False), HTTPStatus.FORBIDDEN, audit=True) == "wrong or missing token"
    assert "no store" in json_error(history("patient=p1", make_router(history=False)), HTTPStatus.NOT_FOUND)
    # the token comes first, even without a store
    json_error(history("patient=p1", make_router(history=False), token=False), HTTPStatus.FORBIDDEN, audit=True)


@pytest.mark.parametrize("query", ["", "patient=", "patient=%20%20", "patient=" + "x" * 129, "patient=a%0Ab",
                                   "patient=a%00"])
def test_history_refuses_a_missing_or_odd_patient(query):
    assert "?patient=ID" in json_error(history(query), HTTPStatus.BAD_REQUEST)


@pytest.mark.parametrize("days", ["0", "367", "-1", "abc", "1.5", ""])
def test_history_refuses_days_out_of_range(days):
    assert "days" in json_error(history(f"patient=p1&days={days}"), HTTPStatus.BAD_REQUEST)
