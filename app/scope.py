"""What every request gets, whichever endpoint answers it: an id, carried by
each log line written for it (layer threads included, see
builders/layers/layerstore.py) and sent back as X-Request-ID, and its count
in the request metrics, by route, method and status."""
from __future__ import annotations

from storage.errors import StorageError

from . import logs, metrics

# Where the endpoint that answers a request writes its route name, for the
# metrics: app/registry.py for /v2, a Flask hook for the pages.
ROUTE = "registry.route"
# Where an endpoint says its answer may be given again without the app
# (a Replayable; app/http/replay.py gives it), and a middleware that
# checked something the answer depends on (credentials) takes it back.
REPLAY = "registry.replay"


class Replayable:
    """An answer the worker may give again to the same request, for at most
    `seconds`: `kind` ("manifest" or "blob") names its metrics.  A blob's
    is given again only while `unchanged()` says storage holds the file
    whose digest was checked (Storage.unchanged), and `open()` reads its
    bytes again, checked, when the worker keeps none (None if it cannot)."""

    __slots__ = ("kind", "seconds", "unchanged", "opener")

    def __init__(self, kind, seconds, unchanged=None, opener=None):
        self.kind, self.seconds = kind, seconds
        self.unchanged, self.opener = unchanged, opener

    def still(self) -> bool:
        return self.unchanged is None or self.unchanged()

    def open(self):
        if self.opener is None:
            return None
        try:
            return self.opener()
        except StorageError:
            return None  # the app says what became of it


class RequestScope:
    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        rid = logs.new_request_id(environ.get("HTTP_X_REQUEST_ID"))
        token = logs.request_id.set(rid)

        def start(status, headers, exc_info=None):
            headers.append(("X-Request-ID", rid))
            metrics.count_request(environ.get(ROUTE, "unmatched"),
                                  environ.get("REQUEST_METHOD", ""), status[:3])
            return start_response(status, headers, exc_info)

        try:
            body = self.app(environ, start)
        finally:
            logs.request_id.reset(token)
        if isinstance(body, (list, tuple)):
            return body  # nothing runs while it is sent
        return _scoped(body, rid)


def _scoped(body, rid):
    """A streamed body, run under its request's id: a chunk read from storage
    may log (a retry, a failure) after the app returned."""
    token = logs.request_id.set(rid)
    try:
        yield from body
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
        try:
            logs.request_id.reset(token)
        except ValueError:
            pass  # closed from another context than it ran in: nothing to undo there
