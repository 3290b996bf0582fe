"""The registry's worker against gunicorn's stock gthread worker, raw request
by raw request: the same bytes, sent to both, get the same answers, the
same bytes read as each request, and the same end of the connection.

app/http/worker.py keeps connections on their threads and app/http/http1.py reads
the plain requests that follow a connection's first; everything else is
gunicorn's own. Both servers run gunicorn.conf.py with one worker and the
same trivial app (tests/echo.py, which answers with what it was asked), one
under NIXERY_HTTP_WORKER=registry and one under gthread, so only the HTTP
layer differs. The requests are made by hypothesis, with a fixed seed and
example budget: request lines, fields, sizes at and around each of
gunicorn's limits (as configured, and as gunicorn clamps what is
configured), pipelining, the shapes of request smuggling (Content-Length
with Transfer-Encoding, two lengths, obsolete folding, bare LF, NUL,
over-long lines), bodies read or left unread, and the same bytes cut into
pieces sent apart.

Every exchange starts with a plain request (so that what follows reaches
app/http/http1.py on the registry's worker) and ends with one asking to close,
then the client shuts its side: whatever a request left unread is read as
the next one, and a server waiting for more bytes sees the end instead of
hanging. The answers compared are their status, the framing of their body
and their Connection header, and for the app's answers the app's account
of the request; the registry words its refusals in JSON where gunicorn
writes a page, so those are compared by status.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from tests.server import Server

FIRST = b"GET /first HTTP/1.1\r\nHost: start\r\n\r\n"
LAST = b"GET /last HTTP/1.1\r\nHost: end\r\nConnection: close\r\n\r\n"

# gunicorn's settings, and the limits its parser applies with them (the
# request line, the number of fields, a field with its CRLF): beyond its
# bounds, a line limit is 8190, a field count of 0 is 32768 and a field
# size of 0 is 8190
PROFILES = {
    "defaults": ("", (4094, 100, 8190)),
    "small limits": ("--limit-request-line 100 --limit-request-fields 20 "
                     "--limit-request-field_size 100", (100, 20, 100)),
    "limits gunicorn clamps": ("--limit-request-line 10000 --limit-request-fields 0 "
                               "--limit-request-field_size 0", (8190, 32768, 8190)),
}
WORKERS = ("registry", "gthread")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Both workers for each profile, started side by side."""
    made = {(profile, worker): Server(
        str(tmp_path_factory.mktemp(f"differential-{worker}")), app="tests.echo:app",
        NIXERY_HTTP_WORKER=worker,
        GUNICORN_CMD_ARGS=f"--workers 1 --threads 4 {args}".strip())
        for profile, (args, _) in PROFILES.items() for worker in WORKERS}
    try:
        with ThreadPoolExecutor(len(made)) as pool:
            list(pool.map(lambda srv: srv.start(), made.values()))
        yield made
    finally:
        for srv in made.values():
            srv.stop()


# -- the requests ------------------------------------------------------------

@dataclass
class Request:
    method: bytes = b"GET"
    target: bytes = b"/"
    version: bytes = b"HTTP/1.1"
    fields: list = field(default_factory=list)  # raw lines, without their ends
    ends: dict = field(default_factory=dict)     # line number -> its end, if not CRLF
    lead: bytes = b""                            # before the request line
    body: bytes = b""
    bare: bool = False                           # an end other than CRLF

    def encode(self) -> bytes:
        lines = [b" ".join((self.method, self.target, self.version)), *self.fields, b""]
        return self.lead + b"".join(
            line + self.ends.get(i, b"\r\n") for i, line in enumerate(lines)) + self.body


PATHS = [b"/", b"/v2/", b"/v2/shell/manifests/latest", b"/chunked", b"/nocontent",
         b"/notmodified", b"/unread", b"/v2/a%20b/tags/list?n=1&last=x", b"/%2e%2e/x",
         b"/caf%C3%A9?q=%zz"]
COMMON = [b"Accept: application/json", b"User-Agent: skopeo/1.9", b"X-Request-ID: abc",
          b"Authorization: Basic dXNlcjpwYXNz", b'If-None-Match: "x"', b"Range: bytes=0-1",
          b"X-Forwarded-For: 203.0.113.7, 10.0.0.1", b"X-Forwarded-Proto: https",
          b"Connection: keep-alive", b"accept: text/html"]
METHODS = [b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"PRI", b"get",
           b"GeT", b"G@T", b"GET\x00", b"", b"GETGETGETGETGETGETGETGET", b"HEAD"]
VERSIONS = [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2", b"HTTP/1.10", b"http/1.1", b"HTTP/1.1 ",
            b"HTTP/1", b"HTTP/0.9", b"HTTP/3.0", b"HTTP/1.1\x00"]
TARGETS = [b"//x/v2/", b"/v2/#frag", b"*", b"http://h/v2/", b"h:80", b"/a b", b"/\x00",
           b"/caf\xe9", b"", b"/%00", b"/?", b"/\x7f", b"/\t", b"/v2/?a=b#c"]
ODD_FIELDS = [
    b"X_Under: 1", b"X-A : 1", b": empty", b"NoColon", b"X-A: a\x00b", b"X-A: a\x01b",
    b"X-A: a\x7fb", b"X-A: caf\xe9", b"X-A:\ta\tb\t", b"X-A:   ", b"X-A:", b"Host: second",
    b"Content-Type: text/plain", b"Connection: close", b"Connection: Close",
    b"Connection: keep-alive, Upgrade", b"Connection: Upgrade, HTTP2-Settings",
    b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABkAAQAAP__", b"Expect: 100-continue",
    b"Expect: magic", b"TE: trailers", b"Trailer: X-T", b"X-Forwarded-Ssl: off",
    b"X-Forwarded-Proto: http", b"X-Forwarded-Protocol: ssl", b"X-Forwarded-Ssl: on",
    b"Via: 1.1 proxy", b"X-\xe9: 1", b"\x00X: 1", b"X-A: 1", b"x-a: 2", b"Host:",
    b"SCRIPT_NAME: /x", b"X-A: \"quoted\\\" value\"", b"X-A: a\rb", b"X-A\t: 1",
]
LENGTHS = [b"+5", b"-1", b" 5", b"5 ", b"05", b"5,5", b"5, 5", b"0x5", b"", b"5 5", b"1e3",
           b"\xb2", b"99999999999999999999", b"5\x00"]
CODINGS = [b"chunked, chunked", b"gzip, chunked", b"identity", b"Chunked", b"chunked ",
           b"identity, chunked", b"gzip", b"xchunked", b"chunked;q=1", b"chunked, gzip",
           b"deflate, chunked", b"compress"]
CHUNKS = [b"5\r\nhello\r\n0\r\n\r\n", b"5;ext=1\r\nhello\r\n0\r\n\r\n",
          b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n", b"0\r\n\r\n", b"zz\r\nhello\r\n0\r\n\r\n",
          b"5\r\nhel\r\n0\r\n\r\n", b"5\r\nhelloXX0\r\n\r\n", b"-1\r\n\r\n",
          b"5 \r\nhello\r\n0\r\n\r\n", b"0x5\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\n",
          b"5\nhello\n0\n\n", b"5;\x00\r\nhello\r\n0\r\n\r\n",
          b"5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n",
          b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: s\r\n\r\n"]
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: s\r\n\r\n"


def _insert(draw, req, line):
    req.fields.insert(draw(st.integers(0, len(req.fields))), line)


def odd_method(draw, req):
    req.method = draw(st.sampled_from(METHODS))


def odd_version(draw, req):
    req.version = draw(st.sampled_from(VERSIONS))


def odd_target(draw, req):
    req.target = draw(st.sampled_from(TARGETS))


def odd_field(draw, req):
    _insert(draw, req, draw(st.sampled_from(ODD_FIELDS)))


def folded(draw, req):
    """obs-fold: a line that continues the one before it."""
    _insert(draw, req, draw(st.sampled_from([b" folded", b"\tfolded", b" ", b"\t"])))


def lead(draw, req):
    req.lead = draw(st.sampled_from([b"\r\n", b"\r\n\r\n", b"\n", b" ", b"\r"]))
    req.bare = req.lead not in (b"\r\n", b"\r\n\r\n")


def line_end(draw, req):
    """A bare LF (or CR, or CR CR LF) ending a line, the blank one included."""
    end = draw(st.sampled_from([b"\n", b"\r", b"\r\r\n", b"\n\r"]))
    if draw(st.booleans()):
        req.ends = {i: end for i in range(len(req.fields) + 2)}
    else:
        req.ends[draw(st.integers(0, len(req.fields) + 1))] = end
    req.bare = True


def body(draw, req):
    """A body, framed well or in one of the ways that let two readers of
    the same bytes disagree about where the next request starts."""
    size = draw(st.integers(0, 12))
    data = b"b" * size
    kind = draw(st.sampled_from(["length", "short", "long", "odd length", "two lengths",
                                 "chunked", "chunks", "length and chunked", "codings",
                                 "two codings", "chunked on 1.0"]))
    length, coding = b"Content-Length: ", b"Transfer-Encoding: "
    if kind == "length":
        req.fields.append(length + str(size).encode())
        req.body = data
    elif kind == "short":  # fewer bytes than said: the next request is read as body
        req.fields.append(length + str(size + draw(st.integers(1, 40))).encode())
        req.body = data
    elif kind == "long":  # more than said: the rest is read as the next request
        req.fields.append(length + str(size).encode())
        req.body = data + draw(st.sampled_from([b"x", b"\r\n", SMUGGLED, b"0\r\n\r\n"]))
    elif kind == "odd length":
        req.fields.append(length + draw(st.sampled_from(LENGTHS)))
        req.body = b"bbbbb"
    elif kind == "two lengths":
        other = draw(st.sampled_from([size, size + 1]))
        req.fields += [length + str(size).encode(), length + str(other).encode()]
        req.body = data
    elif kind == "chunked":
        req.fields.append(coding + b"chunked")
        req.body = draw(st.sampled_from(CHUNKS))
    elif kind == "chunks":  # well formed, of drawn sizes
        sizes = draw(st.lists(st.integers(1, 20), max_size=3))
        req.fields.append(coding + b"chunked")
        req.body = b"".join(b"%x\r\n%s\r\n" % (n, b"c" * n) for n in sizes) + b"0\r\n\r\n"
    elif kind == "length and chunked":  # CL.TE and TE.CL
        fields = [length + str(draw(st.sampled_from([0, 4, 5, 30]))).encode(),
                  coding + b"chunked"]
        req.fields += fields if draw(st.booleans()) else fields[::-1]
        req.body = draw(st.sampled_from(CHUNKS))
    elif kind == "codings":
        req.fields.append(coding + draw(st.sampled_from(CODINGS)))
        req.body = draw(st.sampled_from(CHUNKS))
    elif kind == "two codings":
        req.fields += [coding + b"gzip", coding + b"chunked"]
        req.body = draw(st.sampled_from(CHUNKS))
    else:
        req.version = b"HTTP/1.0"
        req.fields.append(coding + b"chunked")
        req.body = draw(st.sampled_from(CHUNKS))


def long_line(req, n):
    """A request line of n characters."""
    req.target = b"/" + b"a" * max(n - len(req.method) - len(req.version) - 3, 0)


def many_fields(req, n):
    """n fields in all."""
    req.fields += [b"X-%d: %d" % (i, i) for i in range(max(n - len(req.fields), 0))]


def long_field(req, n):
    """A field of n characters with its CRLF."""
    req.fields.insert(len(req.fields) // 2, b"X-Pad: " + b"p" * max(n - len(b"X-Pad: ") - 2, 0))


def _sizes(limits) -> dict:
    """Each way of sizing a request, and the limit it meets."""
    sizes = {long_line: limits[0], long_field: limits[2]}
    # a head is read by app/http/http1.py up to 16 KB: more fields than that holds
    # are gunicorn's alone, as are the heads of the other exchanges
    if limits[1] <= 200:
        sizes[many_fields] = limits[1]
    return sizes


def _near(limit) -> range:
    return range(max(limit - 3, 1), limit + 3)


ODDITIES = [odd_method, odd_version, odd_target, odd_field, odd_field, folded, body, body,
            lead, line_end]


@st.composite
def requests_(draw, limits):
    req = Request(method=draw(st.sampled_from([b"GET", b"GET", b"GET", b"HEAD"])),
                  target=draw(st.sampled_from(PATHS)))
    req.fields = [b"Host: x"] + draw(st.lists(st.sampled_from(COMMON), max_size=3))
    sizes = _sizes(limits)
    size = draw(st.sampled_from([None, None, *sizes]))
    # An over-long line or head with a bare LF in it is refused by gunicorn
    # as one or the other depending on where its reads happen to end: the
    # two never go together, so that each request has one right answer.
    oddities = ODDITIES if size is None else [o for o in ODDITIES if o not in (lead, line_end)]
    for oddity in draw(st.lists(st.sampled_from(oddities), max_size=3)):
        oddity(draw, req)
    if size is not None:
        size(req, draw(st.sampled_from(_near(sizes[size]))))
    return req


@st.composite
def exchanges(draw, limits):
    """The requests of one connection, and where its bytes are cut into
    pieces sent apart (none: all at once)."""
    reqs = draw(st.lists(requests_(limits), min_size=1, max_size=3))
    payload = FIRST + b"".join(r.encode() for r in reqs) + LAST
    cuts = []
    if not any(r.bare for r in reqs) and draw(st.booleans()):
        cuts = sorted(set(draw(st.lists(st.integers(1, len(payload) - 1), max_size=3))))
    return payload, cuts


# -- the exchange and its answers ----------------------------------------------

PAUSE = 0.005  # between the pieces of a cut payload: each a read of its own, mostly


def exchange(port, payload, cuts) -> tuple[bytes, str]:
    """What the server sent back, and how the connection ended."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    bounds = [0, *cuts, len(payload)]

    def send():
        try:
            for i, (start, end) in enumerate(zip(bounds, bounds[1:])):
                if i:
                    time.sleep(PAUSE)
                sock.sendall(payload[start:end])
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server closed first: what it answered is what counts

    sender = threading.Thread(target=send)
    sender.start()
    chunks, ending = [], "closed"
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass  # closed with bytes unread: closed all the same
    except socket.timeout:
        ending = "kept open"
    finally:
        sender.join()
        sock.close()
    return b"".join(chunks), ending


def _dechunk(data: bytes) -> tuple[bytes, bytes]:
    out = []
    while True:
        size, _, data = data.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            return b"".join(out), data.partition(b"\r\n")[2]
        out.append(data[:n])
        data = data[n + 2:]


def answers(data: bytes) -> list:
    """Each answer as (status, framing, Connection, the app's account of
    the request or None for the server's own answer)."""
    found = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        if not sep:
            found.append(("unparsable", head[:200]))
            break
        status, *lines = head.split(b"\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        code = int(status.split()[1])
        echoed = b"x-echo-method" in headers
        if 100 <= code < 200 or code in (204, 304) or headers.get(b"x-echo-method") == b"HEAD":
            framing, body = "none", b""
        elif headers.get(b"transfer-encoding") == b"chunked":
            framing, (body, data) = "chunked", _dechunk(data)
        elif b"content-length" in headers:
            n = int(headers[b"content-length"])
            framing, body, data = "length", data[:n], data[n:]
        else:
            framing, body, data = "to the end", data, b""
        found.append((code, framing, headers.get(b"connection", b"").decode(),
                      json.loads(body) if echoed and body else None))
    return found


def outcome(server, payload, cuts):
    data, ending = exchange(server.port, payload, cuts)
    return answers(data), ending


def _compare(servers, profile, payload, cuts):
    ours = outcome(servers[profile, "registry"], payload, cuts)
    stock = outcome(servers[profile, "gthread"], payload, cuts)
    assert ours == stock, f"sent {payload[:3000]!r} cut at {cuts}"
    # the first request is answered, and the connection always ends
    assert ours[0][0][3]["path"] == "/first" and ours[1] == "closed"
    return ours


@pytest.mark.parametrize("profile", PROFILES)
def test_sizes_at_and_around_each_limit(servers, profile):
    """Every size from three under to two over each limit, not left to
    chance: a request line, a field, the number of fields; sent after the
    first request at once, and apart from it."""
    limits = PROFILES[profile][1]
    statuses = set()
    for size, limit in _sizes(limits).items():
        for n in _near(limit):
            req = Request(fields=[b"Host: x"])
            size(req, n)
            payload = FIRST + req.encode() + LAST
            for cuts in ([], [len(FIRST)]):
                answered = _compare(servers, profile, payload, cuts)
                statuses.add(answered[0][1][0])
    # each limit was met: some taken, some refused
    assert statuses == {200, 414, 431}, statuses


@pytest.mark.parametrize("profile", PROFILES)
@settings(max_examples=200, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_both_workers_read_and_answer_the_same_bytes_alike(servers, profile, data):
    limits = PROFILES[profile][1]
    payload, cuts = data.draw(exchanges(limits))
    ours = _compare(servers, profile, payload, cuts)
    event(f"{[a[0] for a in ours[0]]} cut={bool(cuts)}")
