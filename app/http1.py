"""The plain requests a pull is made of, read and answered in a few steps.

gunicorn reads every request with a parser that checks and allows a great
deal (bodies, chunked transfer, trailers, obsolete folding, Expect,
upgrades, proxy protocol, header mapping policies), and answers through a
response object as general.  Behind nginx, on this project's 2 cores, that
costs about 150 µs of the 300 µs of CPU that a small blob request spends in
a worker (bench/README.md, "nginx in front"), more than the registry's own
work.  But a pull is GET and HEAD requests with a handful of headers and no
body, over one kept-alive connection.

`PlainHTTP.serve` takes the next request of a connection that gunicorn has
already answered once (so TLS, HTTP/2 and the proxy protocol, all settled
on a connection's first request, are gunicorn's) and answers it itself only
when it is plain, by a strict reading: the whole head already read, `GET`
or `HEAD`, `HTTP/1.1`, a path without a fragment, header names that are
tokens without `_`, values of visible ASCII, no `Content-Length`,
`Transfer-Encoding`, `Expect`, `Upgrade` or `HTTP2-Settings`, a
`Connection` of `keep-alive` if any, no repeated `Host`, and gunicorn's
limits on lines and fields.  Anything else goes back, unread, to gunicorn,
which answers it (or refuses it) exactly as before.  A plain request gets
the WSGI environ gunicorn would give it and an answer framed by gunicorn's
rules (tests/app/test_http1.py holds both to gunicorn's own).
"""
from __future__ import annotations

import io
import re
import time
from datetime import datetime

from gunicorn import util
from gunicorn.http import message, wsgi

_LINE = rb"(GET|HEAD) (/[!\"$-~]*) HTTP/1\.1"          # no '#': gunicorn splits fragments
# a token without '_' (gunicorn drops or refuses such names), its value
# (possessive: a head that does not match fails without backtracking)
_FIELD = rb"[!#$%&'*+.^`|~0-9A-Za-z-]++:[ \t]*+(?:[!-~]++(?:[ \t]++[!-~]++)*+)?+[ \t]*+"
_HEAD = re.compile(_LINE + rb"\r\n(?:" + _FIELD + rb"\r\n)*+")
# fields whose handling is gunicorn's alone: bodies, expectations, upgrades
_NOT_PLAIN = frozenset(("CONTENT-LENGTH", "TRANSFER-ENCODING", "EXPECT", "UPGRADE",
                        "HTTP2-SETTINGS", "TE", "TRAILER"))
_MAX_HEAD = 16384  # a longer head (a pull's are well under 4 KB) is gunicorn's
_JOIN_BELOW = 65536  # a body's first bytes up to this size go out with the head


class PlainRequest:
    """What gunicorn's hooks, logger and error handler read of a request."""

    version = (1, 1)
    scheme = "http"
    fragment = ""
    proxy_protocol_info = None
    _expected_100_continue = False

    def __init__(self, method, uri, path, query, headers, scheme):
        self.method, self.uri, self.path, self.query = method, uri, path, query
        self.headers = headers
        self.scheme = scheme
        self.body = io.BytesIO()

    def should_close(self):
        return False


class PlainResponse:
    """gunicorn's Response rules for an HTTP/1.1 request: its header
    checks, the bodies HEAD, 1xx, 204 and 304 go without, a body cut at
    its Content-Length or else chunked; the head of a small answer goes
    out with its body in one write."""

    def __init__(self, sock, method, must_close):
        self.sock = sock
        self.method = method
        self.must_close = must_close
        self.status = None
        self.status_code = None
        self.headers = []
        self.headers_sent = False
        self.response_length = None
        self.chunked = False
        self.omits_body = False
        self.sent = 0

    def start_response(self, status, headers, exc_info=None):
        if exc_info:
            try:
                if self.status and self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("Response headers already set!")
        if not isinstance(status, str):
            raise TypeError(f"{status!r} is not a string")
        if not wsgi.STATUS_RE.fullmatch(status):
            raise ValueError(f"Invalid status {status!r}")
        self.status = status
        try:
            self.status_code = int(status.split()[0])
        except ValueError:
            self.status_code = None
        kept = []
        length = None
        for name, value in headers:
            if not isinstance(name, str):
                raise TypeError(f"{name!r} is not a string")
            if not wsgi.TOKEN_RE.fullmatch(name):
                raise wsgi.InvalidResponseHeaderName(repr(name))
            if not isinstance(value, str):
                raise TypeError(f"{value!r} is not a string")
            if not wsgi.HEADER_VALUE_RE.fullmatch(value):
                raise wsgi.InvalidResponseHeader(repr(name))
            value = value.strip(" \t")
            lname = name.lower()
            if lname == "content-length":
                length = int(value)
            elif util.is_hoppish(name):
                continue  # hop-by-hop: the connection's, not the app's
            kept.append((name, value))
        code = self.status_code
        self.omits_body = self.method == "HEAD" or code in (204, 304) or (
            code is not None and 100 <= code < 200)
        if self.omits_body and (code == 204 or code is not None and 100 <= code < 200):
            length = None  # no Content-Length on 1xx or 204
            kept = [(k, v) for k, v in kept if k.lower() != "content-length"]
        self.headers = kept
        self.response_length = length
        self.chunked = length is None and not self.omits_body
        return self.write

    def should_close(self):
        if self.must_close:
            return True
        if self.response_length is not None or self.chunked or self.omits_body:
            return False
        return True

    def _head(self) -> bytes:
        lines = [f"HTTP/1.1 {self.status}\r\nServer: {wsgi.SERVER}\r\nDate: {_date()}\r\n"
                 f"Connection: {'close' if self.should_close() else 'keep-alive'}\r\n"]
        if self.chunked:
            lines.append("Transfer-Encoding: chunked\r\n")
        lines.extend(f"{k}: {v}\r\n" for k, v in self.headers)
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    def write(self, data):
        if not isinstance(data, bytes):
            raise TypeError(f"{data!r} is not a byte")
        head = b""
        if not self.headers_sent:
            head = self._head()
            self.headers_sent = True
        if not self.omits_body and data:
            if self.response_length is not None:
                data = data[:max(0, self.response_length - self.sent)]
            if data:
                self.sent += len(data)
                if self.chunked:
                    data = b"%X\r\n%s\r\n" % (len(data), data)
        else:
            data = b""
        if head and len(data) < _JOIN_BELOW:
            self.sock.sendall(head + data)  # one write for a small answer
            return
        if head:
            self.sock.sendall(head)
        if data:
            self.sock.sendall(data)  # a blob's chunk is not copied to join it

    def close(self):
        out = b""
        if not self.headers_sent:
            out = self._head()
            self.headers_sent = True
        if self.chunked:
            out += b"0\r\n\r\n"
        if out:
            self.sock.sendall(out)
        if (self.response_length is not None and not self.omits_body
                and self.sent < self.response_length):
            self.must_close = True  # the client waits for bytes that will not come


def remote_addr(client) -> str:
    """REMOTE_ADDR as gunicorn sets it for a peer's address."""
    if isinstance(client, tuple):
        return client[0]
    return client.decode() if isinstance(client, bytes) else client


def addresses(environ, client, server):
    """REMOTE_* and SERVER_* as gunicorn sets them for a TCP listener."""
    environ["REMOTE_ADDR"] = remote_addr(client)
    if isinstance(client, tuple):
        environ["REMOTE_PORT"] = str(client[1])
    environ["SERVER_NAME"], environ["SERVER_PORT"] = server[0], str(server[1])


_now = [0, ""]


def _date() -> str:
    """gunicorn's Date header, formatted once a second."""
    second = int(time.time())
    if _now[0] != second:
        _now[:] = second, util.http_date(second)
    return _now[1]


class PlainHTTP:
    """A worker's reader and writer of plain requests (see the module)."""

    def __init__(self, worker):
        self.worker = worker
        cfg = worker.cfg
        self.cfg = cfg
        self.limit_line = cfg.limit_request_line or _MAX_HEAD
        self.limit_fields = cfg.limit_request_fields
        self.limit_field = cfg.limit_request_field_size or _MAX_HEAD
        self.secure_headers = dict(cfg.secure_scheme_headers)
        self.base = wsgi.base_environ(cfg)
        self.base["wsgi.multithread"] = True
        # a worker's settings stay as they are for its life
        self.pre_request, self.post_request = cfg.pre_request, cfg.post_request
        self.keepalive = cfg.keepalive

    @staticmethod
    def usable(cfg, script_name) -> bool:
        """Whether a worker with these settings may answer plain requests:
        TLS, the proxy protocol and a SCRIPT_NAME are gunicorn's to apply."""
        return (not cfg.is_ssl and cfg.proxy_protocol == "off" and not script_name
                and getattr(cfg, "protocol", "http") == "http")

    def trusted(self, conn) -> bool:
        """Whether the peer may set the scheme headers (forwarded_allow_ips),
        decided once per connection, as gunicorn decides it per request."""
        trusted = getattr(conn, "plain_trusted", None)
        if trusted is None:
            client = conn.client
            trusted = not isinstance(client, tuple) or message._ip_in_allow_list(
                client[0], self.cfg.forwarded_allow_ips, self.cfg.forwarded_allow_networks())
            conn.plain_trusted = trusted
        return trusted

    def serve(self, conn) -> bool | None:
        """Answer the connection's next request if it is plain: True to keep
        the connection, False to close it; None, having read nothing, if
        gunicorn is to answer it."""
        if conn.is_http2 or conn.parser is None or not isinstance(conn.server, tuple):
            return None
        unreader = conn.parser.unreader
        data = unreader.take_buffered()
        if b"\r\n\r\n" not in data:
            data += conn.sock.recv(8192)  # blocking, as gthread keeps it here
        parsed = self.parse(data, self.trusted(conn))
        if parsed is None:
            unreader.unread(data)  # gunicorn reads it all again
            return None
        req, environ, rest = parsed
        if rest:
            unreader.unread(rest)  # the next request, sent ahead
        return self.answer(conn, req, environ)

    def parse(self, data: bytes, trusted: bool):
        """(request, environ, bytes after its head) for a plain request, or None."""
        end = data.find(b"\r\n\r\n")
        if end < 0 or end > _MAX_HEAD:
            return None
        head = data[:end + 2]
        if not _HEAD.fullmatch(head):
            return None
        lines = head.decode("ascii").split("\r\n")  # ASCII: _HEAD allows no other byte
        lines.pop()  # after the last CRLF
        line = lines[0]
        if len(line) > self.limit_line or len(lines) - 1 > self.limit_fields:
            return None
        method, target, _ = line.split(" ")
        if target.startswith("//"):
            return None  # gunicorn reads it as an authority
        env = self.base.copy()
        headers = []
        host = False
        scheme = None
        repeated = None
        secure = self.secure_headers if trusted else {}
        for field in lines[1:]:
            if len(field) > self.limit_field:
                return None
            name, _, value = field.partition(":")
            name = name.upper()
            if name in _NOT_PLAIN:
                return None
            value = value.strip(" \t")
            if name == "HOST":
                if host:
                    return None
                host = True
            elif name == "CONNECTION" and value.lower() != "keep-alive":
                return None
            elif name == "CONTENT-TYPE":
                return None  # a GET with a type is not plain (and it is a singleton)
            if name in secure:
                this = "https" if value == secure[name] else "http"
                if scheme is not None and this != scheme:
                    return None  # gunicorn refuses conflicting scheme headers
                scheme = this
            headers.append((name, value))
            key = "HTTP_" + name.replace("-", "_")
            if key in env:
                if repeated is None:
                    repeated = {}
                repeated.setdefault(key, [env[key]]).append(value)
            else:
                env[key] = value
        if repeated:
            for key, values in repeated.items():
                env[key] = ",".join(values)
        path, _, query = target.partition("?")
        req = PlainRequest(method, target, path, query, headers, scheme or "http")
        env["wsgi.input"] = req.body
        env["REQUEST_METHOD"] = method
        env["QUERY_STRING"] = query
        env["RAW_URI"] = target
        env["SERVER_PROTOCOL"] = "HTTP/1.1"
        env["wsgi.url_scheme"] = req.scheme
        env["PATH_INFO"] = util.unquote_to_wsgi_str(path) if "%" in path else path
        env["SCRIPT_NAME"] = ""
        return req, env, data[end + 4:]

    def answer(self, conn, req, environ) -> bool:
        """Run the app for a parsed request, as gthread's handle_request does."""
        worker = self.worker
        client = conn.client
        environ["gunicorn.socket"] = conn.sock
        addresses(environ, client, conn.server)
        resp = None
        try:
            self.pre_request(worker, req)
            start = datetime.now()
            worker.nr += 1
            if worker.nr >= worker.max_requests and worker.alive:
                worker.log.info("Autorestarting worker after current request.")
                worker.alive = False
            resp = PlainResponse(conn.sock, req.method, must_close=(
                not worker.alive or not self.keepalive
                or len(worker.keepalived_conns) >= worker.max_keepalived))
            body = worker.wsgi(environ, resp.start_response)
            try:
                for chunk in body:
                    resp.write(chunk)
                resp.close()
            finally:
                worker.log.access(resp, req, environ, datetime.now() - start)
                close = getattr(body, "close", None)
                if close is not None:
                    close()
            return not resp.should_close()
        except OSError as e:
            worker.log.debug("Connection lost while answering %s: %s", req.uri, e)
            return False
        except Exception as e:
            if resp is not None and resp.headers_sent:
                worker.log.exception("Error handling request")
            else:
                worker.handle_error(req, conn.sock, client, e)
            return False
        finally:
            try:
                self.post_request(worker, req, environ, resp)
            except Exception:
                worker.log.exception("Exception in post_request hook")
