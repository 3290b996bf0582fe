"""Answers written by gunicorn's rules, without its response object.

gunicorn's Response is general (any protocol version, proxies, sendfile);
the answers here are HTTP/1.1 ones: app/http/http1.py answers plain requests
with it, and app/http/worker.py its JSON refusal of a request gunicorn could not
read.  tests/app/test_http1.py compares the bytes with gunicorn's own.
"""
from __future__ import annotations

import time

from gunicorn import util
from gunicorn.http import wsgi

JOIN_BELOW = 65536  # a body's first bytes up to this size go out with the head


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
        if head and len(data) < JOIN_BELOW:
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


_now = [0, "", b""]


def _date() -> str:
    """gunicorn's Date header, formatted once a second."""
    second = int(time.time())
    if _now[0] != second:
        text = util.http_date(second)
        _now[:] = second, text, text.encode("latin-1")
    return _now[1]


def date_bytes() -> bytes:
    """The Date header's value, as bytes."""
    _date()
    return _now[2]
