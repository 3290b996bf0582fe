"""app/http/http1.py and app/http/http1_response.py held to gunicorn's own parser and
response: the same environ for every request it takes, the same bytes on
the wire for every answer, and every other request left to gunicorn."""
import socket
import threading
import types

import pytest
from gunicorn.config import Config
from gunicorn.http import RequestParser, wsgi
from gunicorn.http.errors import ParseException

from app.http.http1 import PlainHTTP, addresses, limits
from app.http.http1_response import PlainResponse

PEER = ("127.0.0.1", 40000)
SERVER = ("127.0.0.1", 8080)
DIGEST = "sha256:" + "ab" * 32

PLAIN = [
    f"GET /v2/shell/hello/blobs/{DIGEST} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    "X-Forwarded-For: 10.0.0.7\r\nX-Forwarded-Proto: https\r\nUser-Agent: skopeo/1.9\r\n\r\n",
    "HEAD /v2/shell/manifests/latest HTTP/1.1\r\nHost: registry.example\r\n"
    "Accept: application/vnd.oci.image.manifest.v1+json\r\n"
    "Accept: application/vnd.docker.distribution.manifest.v2+json\r\n"
    "Authorization: Basic dXNlcjpwYXNz\r\n\r\n",
    "GET /v2/shell/tags/list?n=2&last=a%20b HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
    "GET /v2/a%2Fb/../%2e%2e/manifests/%F0%9F%90%8D HTTP/1.1\r\nhost: x\r\n"
    "x-forwarded-proto:http\r\nIf-None-Match:   \"etag\"  \r\nX-Empty:\r\n\r\n",
    "GET / HTTP/1.1\r\n\r\n",
    "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Ssl: on\r\n\r\n",
]

NOT_PLAIN = {
    "a body": "POST /v2/x/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab",
    "chunked": "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "a length on a GET": "GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    "HTTP/1.0": "GET / HTTP/1.0\r\nHost: x\r\n\r\n",
    "another method": "DELETE /v2/x/manifests/latest HTTP/1.1\r\nHost: x\r\n\r\n",
    "a lower-case method": "get / HTTP/1.1\r\n\r\n",
    "an absolute target": "GET http://x/v2/ HTTP/1.1\r\n\r\n",
    "an authority-like path": "GET //x/v2/ HTTP/1.1\r\n\r\n",
    "a fragment": "GET /v2/#x HTTP/1.1\r\n\r\n",
    "an expectation": "GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
    "an upgrade": "GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AA\r\n\r\n",
    "Connection: close": "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    "an underscore": "GET / HTTP/1.1\r\nX_Forwarded_For: 1.2.3.4\r\n\r\n",
    "a folded line": "GET / HTTP/1.1\r\nX-A: 1\r\n  2\r\n\r\n",
    "a bare LF": "GET / HTTP/1.1\nHost: x\n\n",
    "a bare LF in a value": "GET / HTTP/1.1\r\nX-A: 1\n2\r\n\r\n",
    "a control character": "GET / HTTP/1.1\r\nX-A: 1\x012\r\n\r\n",
    "a byte beyond ASCII": "GET / HTTP/1.1\r\nX-A: caf\xe9\r\n\r\n",
    "a space before the colon": "GET / HTTP/1.1\r\nX-A : 1\r\n\r\n",
    "two Hosts": "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "a Content-Type": "GET / HTTP/1.1\r\nContent-Type: text/plain\r\n\r\n",
    "scheme headers that disagree":
        "GET / HTTP/1.1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Ssl: off\r\n\r\n",
    "a request line over the limit": "GET /" + "a" * 5000 + " HTTP/1.1\r\n\r\n",
    "a field over the limit": "GET / HTTP/1.1\r\nX-A: " + "a" * 9000 + "\r\n\r\n",
    "too many fields": "GET / HTTP/1.1\r\n" + "X-A: 1\r\n" * 101 + "\r\n",
    "a head over 16 KB": "GET / HTTP/1.1\r\n" + ("X-A: " + "a" * 200 + "\r\n") * 90 + "\r\n",
    "an unfinished head": "GET / HTTP/1.1\r\nHost: x\r\n",
    "nothing": "",
}


def plain(cfg=None) -> PlainHTTP:
    return PlainHTTP(types.SimpleNamespace(cfg=cfg or Config()))


def gunicorn_environ(raw: bytes, cfg, peer=PEER):
    """What gunicorn's own parser and wsgi.create() make of the request."""
    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(raw)
        theirs.shutdown(socket.SHUT_WR)
        req = next(RequestParser(cfg, ours, peer))
        resp, environ = wsgi.create(req, ours, peer, SERVER, cfg)
        environ["wsgi.multithread"] = True  # as gthread sets it
        return req, environ
    finally:
        ours.close()
        theirs.close()


# objects made per request (or per worker) whose identity can differ
OBJECTS = {"wsgi.input", "wsgi.errors", "gunicorn.socket", "wsgi.early_hints"}


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted peer", "other peer"])
@pytest.mark.parametrize("raw", PLAIN)
def test_a_plain_request_gets_the_environ_gunicorn_gives_it(raw, trusted):
    cfg = Config()
    cfg.set("forwarded_allow_ips", "127.0.0.1" if trusted else "10.9.9.9")
    req, expected = gunicorn_environ(raw.encode("latin-1"), cfg)
    parsed = plain(cfg).parse(raw.encode("latin-1") + b"GET /next", trusted)
    assert parsed is not None
    ours, environ, rest = parsed
    assert rest == b"GET /next"
    addresses(environ, PEER, SERVER)
    environ["gunicorn.socket"] = expected["gunicorn.socket"]
    assert {k: v for k, v in environ.items() if k not in OBJECTS} == \
        {k: v for k, v in expected.items() if k not in OBJECTS}
    assert environ["wsgi.input"].read() == expected["wsgi.input"].read() == b""
    assert (ours.method, ours.uri, ours.path, ours.query, ours.scheme) == \
        (req.method, req.uri, req.path, req.query, req.scheme)
    assert [(k.upper(), v) for k, v in ours.headers] == req.headers


@pytest.mark.parametrize("raw", NOT_PLAIN.values(), ids=NOT_PLAIN.keys())
def test_any_other_request_is_left_to_gunicorn(raw):
    assert plain().parse(raw.encode("latin-1"), trusted=True) is None


def _gunicorn_reading(parser):
    """What gunicorn's parser makes of the next request: the request as
    read, body included, or what it raised."""
    try:
        req = next(parser)
    except (StopIteration, ParseException) as e:
        return type(e).__name__, str(e)
    return req.method, req.uri, req.version, req.headers, req.body.read()


DECLINED = {name: raw for name, raw in NOT_PLAIN.items() if raw}  # before a plain one


@pytest.mark.parametrize("raw", DECLINED.values(), ids=DECLINED.keys())
@pytest.mark.parametrize("buffered", [0, 10, None], ids=["none read ahead", "some", "all"])
def test_a_request_declined_reaches_gunicorns_parser_untouched(raw, buffered):
    """serve() may have read ahead (gunicorn's buffer) and from the socket
    before it declines: gunicorn's parser then reads the very same bytes,
    and the request after them, as on a connection of its own."""
    data = raw.encode("latin-1") + b"GET /next HTTP/1.1\r\n\r\n"
    cut = len(data) if buffered is None else buffered

    def reading(declined_first: bool):
        ours, theirs = socket.socketpair()
        try:
            parser = RequestParser(Config(), ours, PEER)
            if declined_first:
                parser.unreader.unread(data[:cut])  # as gunicorn left it, read ahead
                theirs.sendall(data[cut:])
            else:
                theirs.sendall(data)
            theirs.shutdown(socket.SHUT_WR)
            if declined_first:
                conn = types.SimpleNamespace(is_http2=False, parser=parser, server=SERVER,
                                             sock=ours, client=PEER)
                assert plain().serve(conn) is None
            return [_gunicorn_reading(parser), _gunicorn_reading(parser)]
        finally:
            ours.close()
            theirs.close()

    assert reading(declined_first=True) == reading(declined_first=False)


def gunicorn_reads(raw: bytes, cfg) -> bool:
    """Whether gunicorn's parser takes the request, rather than refusing it."""
    try:
        gunicorn_environ(raw, cfg)
    except ParseException:
        return False
    return True


# gunicorn's settings as configured, and the limits its parser applies:
# the line at most 8190 (0: none), 1 to 32768 fields (0: 32768), a field
# 8190 with its CRLF when 0
LIMITS = {
    "defaults": ({}, (4094, 100, 8190)),
    "small": ({"limit_request_line": 60, "limit_request_fields": 3,
               "limit_request_field_size": 40}, (60, 3, 40)),
    "over gunicorn's bounds": ({"limit_request_line": 10000, "limit_request_fields": 40000},
                               (8190, 32768, 8190)),
    "zeros": ({"limit_request_line": 0, "limit_request_fields": 0,
               "limit_request_field_size": 0}, (0, 32768, 8190)),
}


def configured(settings) -> Config:
    cfg = Config()
    for name, value in settings.items():
        cfg.set(name, value)
    return cfg


@pytest.mark.parametrize("settings, expected", LIMITS.values(), ids=LIMITS.keys())
def test_limits_are_gunicorns_clamped_as_it_clamps_them(settings, expected):
    assert limits(configured(settings)) == expected


def _around(limit):
    return [n for n in range(limit - 3, limit + 3) if n > 0]


@pytest.mark.parametrize("settings", [s for s, _ in LIMITS.values()], ids=LIMITS.keys())
def test_a_request_at_and_around_each_limit_is_taken_exactly_when_gunicorn_takes_it(settings):
    """Taken, with gunicorn's environ, if and only if gunicorn's parser
    reads it; else left to gunicorn, which refuses it (414 or 431)."""
    cfg = configured(settings)
    line_limit, fields_limit, field_limit = limits(cfg)
    requests = []
    for n in _around(line_limit or 8190):  # the line, "GET /aa..a HTTP/1.1"
        requests.append(f"GET /{'a' * (n - len('GET / HTTP/1.1'))} HTTP/1.1\r\n\r\n")
    for n in _around(field_limit):  # a field with its CRLF, "X-Pad: bb..b\r\n"
        requests.append(f"GET / HTTP/1.1\r\nX-Pad: {'b' * (n - len('X-Pad: ') - 2)}\r\n\r\n")
    for n in _around(min(fields_limit, 200)):  # many fields (a head is at most 16 KB)
        requests.append("GET / HTTP/1.1\r\n" + "".join(f"X-{i}: {i}\r\n" for i in range(n))
                        + "\r\n")
    taken = 0
    for raw in (r.encode() for r in requests):
        parsed = plain(cfg).parse(raw, trusted=True)
        assert (parsed is not None) == gunicorn_reads(raw, cfg), raw[:80]
        if parsed is not None:
            taken += 1
            _, expected = gunicorn_environ(raw, cfg)
            environ = parsed[1]
            addresses(environ, PEER, SERVER)
            assert {k: v for k, v in environ.items() if k not in OBJECTS} == \
                {k: v for k, v in expected.items() if k not in OBJECTS}
    assert 0 < taken < len(requests)

def test_scheme_headers_count_only_from_trusted_peers():
    raw = b"GET /v2/ HTTP/1.1\r\nX-Forwarded-Proto: https\r\n\r\n"
    assert plain().parse(raw, trusted=True)[1]["wsgi.url_scheme"] == "https"
    assert plain().parse(raw, trusted=False)[1]["wsgi.url_scheme"] == "http"
    # disagreeing ones from another peer are only headers, as for gunicorn
    both = b"GET / HTTP/1.1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Ssl: off\r\n\r\n"
    assert plain().parse(both, trusted=False)[1]["wsgi.url_scheme"] == "http"


def test_the_worker_takes_plain_requests_only_where_gunicorn_applies_nothing_more():
    assert PlainHTTP.usable(Config(), "")
    assert not PlainHTTP.usable(Config(), "/registry")  # gunicorn strips SCRIPT_NAME
    cfg = Config()
    cfg.set("proxy_protocol", "v1")
    assert not PlainHTTP.usable(cfg, "")


def wire(write_answer) -> bytes:
    """The bytes an answer puts on a socket, its Date line blanked."""
    ours, theirs = socket.socketpair()
    got = []
    reader = threading.Thread(target=lambda: got.append(_read_all(theirs)))
    reader.start()
    try:
        write_answer(ours)
    finally:
        ours.close()
        reader.join(10)
        theirs.close()
    lines = got[0].split(b"\r\n")
    return b"\r\n".join(b"Date: -" if line.startswith(b"Date: ") else line for line in lines)


def _read_all(sock) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


ANSWERS = {
    "a blob through nginx": ("GET", "200 OK", [
        ("Docker-Content-Digest", DIGEST), ("ETag", f'"{DIGEST}"'),
        ("Content-Type", "application/octet-stream"), ("Content-Length", "0"),
        ("X-Accel-Redirect", "/_registry_blobs/layers/x")], [b""]),
    "a manifest": ("GET", "200 OK", [("Content-Type", "application/json"),
                                     ("Content-Length", "13")], [b'{"schema', b'Version":2}']),
    "a stream without a length": ("GET", "200 OK", [("Content-Type", "text/plain")],
                                  [b"first ", b"", b"second"]),
    "HEAD with a length": ("HEAD", "200 OK", [("Content-Length", "1234")], [b"ignored"]),
    "not modified": ("GET", "304 Not Modified", [("ETag", '"x"'), ("Content-Length", "5")],
                     []),
    "no content": ("GET", "204 No Content", [("Content-Length", "0")], []),
    "a body longer than its length": ("GET", "200 OK", [("Content-Length", "4")],
                                      [b"abcdef", b"gh"]),
    "hop-by-hop headers from the app": ("GET", "200 OK", [
        ("Connection", "close"), ("Keep-Alive", "timeout=5"), ("Content-Length", "2"),
        ("X-Value", "  padded\t")], [b"ok"]),
    "a blob in large chunks": ("GET", "200 OK", [("Content-Length", "300000")],
                               [b"x" * 200000, b"y" * 100000]),
    "a large stream without a length": ("GET", "200 OK", [], [b"z" * 100000, b"w" * 10]),
    "an error": ("GET", "404 Not Found", [("Content-Type", "application/json"),
                                          ("Content-Length", "2")], [b"{}"]),
}


def send(resp, status, headers, body):
    """What gthread (and app/http/http1.py) do with an app's answer."""
    resp.start_response(status, list(headers))
    for chunk in body:
        resp.write(chunk)
    resp.close()
    return resp


@pytest.mark.parametrize("case", ANSWERS.values(), ids=ANSWERS.keys())
def test_an_answer_has_the_bytes_gunicorn_would_send(case):
    method, status, headers, body = case
    raw = f"{method} /v2/ HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    cfg = Config()
    req, _ = gunicorn_environ(raw, cfg)

    def answer_with(make):
        def answer(sock):
            resp = send(make(sock), status, headers, body)
            sock.sendall(f"[close: {resp.should_close()}]".encode())
        return answer

    assert wire(answer_with(lambda sock: PlainResponse(sock, method, must_close=False))) == \
        wire(answer_with(lambda sock: wsgi.Response(req, sock, cfg)))


def test_a_stopping_worker_says_it_closes_the_connection():
    answer = wire(lambda sock: send(PlainResponse(sock, "GET", must_close=True), "200 OK",
                                    [("Content-Length", "2")], [b"ok"]))
    assert b"\r\nConnection: close\r\n" in answer


def test_a_body_shorter_than_its_length_closes_the_connection():
    closes = []
    wire(lambda sock: closes.append(send(PlainResponse(sock, "GET", must_close=False), "200 OK",
                                         [("Content-Length", "10")], [b"short"]).should_close()))
    assert closes == [True]


@pytest.mark.parametrize("headers, error", [
    ([("X-Bad", "a\r\nSet-Cookie: x")], wsgi.InvalidResponseHeader),
    ([("X Bad", "a")], wsgi.InvalidResponseHeaderName),
    ([(b"X-Bytes", "a")], TypeError),
])
def test_a_header_gunicorn_refuses_is_refused(headers, error):
    resp = PlainResponse(None, "GET", must_close=False)
    with pytest.raises(error):
        resp.start_response("200 OK", headers)
    gresp = wsgi.Response(types.SimpleNamespace(method="GET", version=(1, 1)), None, Config())
    with pytest.raises(error):
        gresp.start_response("200 OK", headers)
