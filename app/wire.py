"""HTTP details of the registry's answers: the request and reply the /v2
handlers (app/registry.py) read and write, content negotiation,
conditional and range requests, streamed bodies and status lines."""
from __future__ import annotations

import functools
import http

from werkzeug.http import parse_etags, parse_range_header

from builders.image import manifest

from . import metrics

CHUNK = 1 << 20
REASON_MAX = 300
STATUS_LINES = {s.value: f"{s.value} {s.phrase}" for s in http.HTTPStatus}
# on every /v2 answer, the registry's own and those answered in front of it
API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")
# a blob's bytes never change under its digest
BLOB_CACHE = ("Cache-Control", "max-age=31536000, immutable")


class Reply:
    """What a handler answers: status, headers and the body's chunks."""

    __slots__ = ("status", "headers", "body", "reason")

    def __init__(self, status, headers, body=(), reason=None):
        self.status = status
        self.headers = headers
        self.body = body
        self.reason = reason  # the status line's words, when not the standard ones


class Call:
    """One request under /v2, as the handlers read it."""

    __slots__ = ("environ", "method", "path")

    def __init__(self, environ):
        self.environ = environ
        self.method = environ.get("REQUEST_METHOD", "GET")
        # WSGI hands the path over as latin-1 code points of its bytes
        self.path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")

    def header(self, name: str) -> str | None:
        """A request header by its WSGI key, e.g. HTTP_RANGE."""
        return self.environ.get(name)

    def url(self, path: str) -> str:
        """An absolute URL on this registry, as the client addressed it."""
        env = self.environ
        host = env.get("HTTP_HOST") or f"{env.get('SERVER_NAME', 'localhost')}:{env.get('SERVER_PORT', '80')}"
        return f"{env.get('wsgi.url_scheme', 'http')}://{host}{path}"


@functools.lru_cache(maxsize=256)
def _accepted(accept: str) -> dict[str, float]:
    """Media type -> quality, as an Accept header lists them (the first
    mention of a type counts).  Clients send a few Accept headers over and
    over, and each manifest request asks twice: parsed once each.  The
    answer is shared: read it, never change it."""
    found = {}
    for item in accept.split(","):
        parts = [p.strip() for p in item.split(";")]
        q = 1.0
        for param in parts[1:]:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        found.setdefault(parts[0], q)
    return found


def admits_index(accept: str) -> bool:
    """Whether the client takes an image index or a manifest list."""
    accepted = _accepted(accept)
    return any(accepted.get(t, 0) > 0 for t in manifest.INDEX_TYPES)


def negotiate(accept: str, offered=manifest.MANIFEST_TYPES) -> str:
    """Of the `offered` media types, the one the client lists with the
    higher quality (the earlier on a tie); the first offered when it names
    none of them."""
    best, best_q = offered[0], 0.0
    for media_type, q in _accepted(accept).items():
        if media_type in offered and q > best_q:
            best, best_q = media_type, q
    return best


def not_modified(call, digest) -> bool:
    """Whether the client's If-None-Match already names this content."""
    value = call.header("HTTP_IF_NONE_MATCH")
    return bool(value) and parse_etags(value).contains_weak(digest)


def requested_range(call, digest, size):
    """[start, stop) of a single-range request the client may have, or None
    for the whole blob; (0, 0) for a range outside it.  A range under an
    If-Range for other content is ignored, as HTTP says."""
    value = call.header("HTTP_RANGE")
    if not value:
        return None
    if_range = call.header("HTTP_IF_RANGE")
    if if_range and if_range.strip() != f'"{digest}"':
        return None
    rng = parse_range_header(value)
    if rng is None or len(rng.ranges) != 1:
        return None
    return rng.range_for_length(size) or (0, 0)


def stream_blob(f, start, stop):
    """The blob's bytes [start, stop) in chunks; counts, once at the end, the
    bytes the server took (a chunk it failed to send is not counted)."""
    taken = 0
    try:
        with f:
            f.seek(start)
            left = stop - start
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                yield chunk
                taken += len(chunk)
    finally:
        metrics.BLOB_BYTES.inc(taken)


def reason(message: str) -> str:
    """An error's message as the words of its status line.  containerd
    starts a pull with a HEAD, whose answer has no body, and shows only the
    status line of an error: this is the one place its users can read why.
    HTTP allows any visible ASCII there; the rest is replaced."""
    words = "".join(c if " " <= c <= "~" else "?" for c in message)
    return words[:REASON_MAX - 3] + "..." if len(words) > REASON_MAX else words


def close(body):
    close = getattr(body, "close", None)
    if close is not None:
        close()
