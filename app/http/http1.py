"""The plain requests a pull is made of, read and answered in a few steps.

gunicorn reads every request with a parser that checks and allows a great
deal (bodies, chunked transfer, trailers, obsolete folding, Expect,
upgrades, proxy protocol, header mapping policies), and answers through a
response object as general.  Behind nginx, on this project's 2 cores, that
costs about 150 µs of the 300 µs of CPU that a small blob request spends in
a worker (docs/benchmarks.md, "nginx in front"), more than the registry's own
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
rules (tests/app/test_http1.py holds both to gunicorn's own, and
tests/e2e/test_http_differential.py the whole worker to stock gthread).
"""
from __future__ import annotations

import io
import re
from datetime import datetime

from gunicorn import util
from gunicorn.http import message, unreader as unreaders, wsgi

from .http1_response import PlainResponse
from .replay import BODY_MAX, Replays
from ..proxy import Proxies

_LINE = rb"(GET|HEAD) (/[!\"$-~]*) HTTP/1\.1"          # no '#': gunicorn splits fragments
# a token without '_' (gunicorn drops or refuses such names), its value
# (possessive: a head that does not match fails without backtracking)
_FIELD = rb"[!#$%&'*+.^`|~0-9A-Za-z-]++:[ \t]*+(?:[!-~]++(?:[ \t]++[!-~]++)*+)?+[ \t]*+"
_HEAD = re.compile(_LINE + rb"\r\n(?:" + _FIELD + rb"\r\n)*+")
# fields whose handling is gunicorn's alone: bodies, expectations, upgrades
_NOT_PLAIN = frozenset(("CONTENT-LENGTH", "TRANSFER-ENCODING", "EXPECT", "UPGRADE",
                        "HTTP2-SETTINGS", "TE", "TRAILER"))
_MAX_HEAD = 16384  # a longer head (a pull's are well under 4 KB) is gunicorn's


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


def limits(cfg) -> tuple[int, int, int]:
    """gunicorn's limits on a request line (0: none), the number of header
    fields and a field's length with its CRLF, as its parser clamps the
    configured values: read off a request it parses with them, so that the
    rules of clamping are gunicorn's own, not a copy that could drift."""
    probe = message.Request(cfg, unreaders.IterUnreader([b"GET / HTTP/1.1\r\n\r\n"]),
                            ("127.0.0.1", 0))
    return probe.limit_request_line, probe.limit_request_fields, probe.limit_request_field_size


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


class PlainHTTP:
    """A worker's reader and writer of plain requests (see the module)."""

    def __init__(self, worker):
        self.worker = worker
        cfg = worker.cfg
        self.cfg = cfg
        line, self.limit_fields, field = limits(cfg)
        self.limit_line = line or _MAX_HEAD  # no limit: the head's own bounds it
        self.limit_field = field - 2  # gunicorn counts a field's CRLF
        self.secure_headers = dict(cfg.secure_scheme_headers)
        self.proxies = Proxies(",".join(cfg.forwarded_allow_ips))
        self.base = wsgi.base_environ(cfg)
        self.base["wsgi.multithread"] = True
        # a worker's settings stay as they are for its life
        self.pre_request, self.post_request = cfg.pre_request, cfg.post_request
        self.keepalive = cfg.keepalive
        # answers given again without the app (app/http/replay.py)
        self.replays = Replays(worker.log, self.proxies) if Replays.usable(worker) else None
        from ..scope import REPLAY  # here, in the worker: it makes the metrics
        self.replay_key = REPLAY

    @staticmethod
    def usable(cfg, script_name) -> bool:
        """Whether a worker with these settings may answer plain requests:
        TLS, the proxy protocol and a SCRIPT_NAME are gunicorn's to apply."""
        return (not cfg.is_ssl and cfg.proxy_protocol == "off" and not script_name
                and getattr(cfg, "protocol", "http") == "http")

    def trusted(self, conn) -> bool:
        """Whether the peer may set the scheme headers (forwarded_allow_ips,
        by app/proxy.py's rule, which is gunicorn's), decided once per
        connection, as gunicorn decides it per request; a peer that is not
        an IP socket (a unix socket's) is, for gunicorn."""
        trusted = getattr(conn, "plain_trusted", None)
        if trusted is None:
            client = conn.client
            trusted = not isinstance(client, tuple) or self.proxies.trusts(client[0])
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
        end = data.find(b"\r\n\r\n")
        if end < 0:
            data += conn.sock.recv(8192)  # blocking, as gthread keeps it here
            end = data.find(b"\r\n\r\n")
        if self.replays is not None and 0 <= end < _MAX_HEAD and self.may_keep(conn):
            # the same head as a request answered before: its answer again
            head = data[:end + 4]
            if self.replays.answer(conn.sock, head, remote_addr(conn.client)):
                self.worker.nr += 1
                if len(data) > end + 4:
                    unreader.unread(data[end + 4:])
                return True
        parsed = self.parse(data, self.trusted(conn))
        if parsed is None:
            unreader.unread(data)  # gunicorn reads it all again
            return None
        req, environ, rest = parsed
        if rest:
            unreader.unread(rest)  # the next request, sent ahead
        return self.answer(conn, req, environ, data[:len(data) - len(rest)])

    def may_keep(self, conn) -> bool:
        """Whether the connection stays open after its next answer (as
        `answer` decides it), and the worker goes on after it: only then is
        an answer given again without the app."""
        worker = self.worker
        return (worker.alive and self.keepalive and worker.nr + 1 < worker.max_requests
                and len(worker.keepalived_conns) < worker.max_keepalived)

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

    def answer(self, conn, req, environ, head=None) -> bool:
        """Run the app for a parsed request, as gthread's handle_request
        does; its answer is kept to be given again if the app says so."""
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
            replayable = environ.get(self.replay_key) if self.replays is not None else None
            try:
                if replayable is None:
                    for chunk in body:
                        resp.write(chunk)
                else:
                    chunks, size = [], 0
                    for chunk in body:
                        resp.write(chunk)
                        if chunks is not None:
                            size += len(chunk)
                            if size <= BODY_MAX:
                                chunks.append(chunk)
                            else:
                                chunks = None  # read from storage when given again
                resp.close()
                if replayable is not None and head is not None:
                    self.replays.keep(head, environ, resp, chunks, replayable)
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
