"""What every request gets, whichever endpoint answers it: an id, carried by
each log line written for it (layer threads included, see
builders/layers/layerstore.py) and sent back as X-Request-ID, and its count
in the request metrics, by route, method and status."""
from __future__ import annotations

from . import logs, metrics

# Where the endpoint that answers a request writes its route name, for the
# metrics: app/registry.py for /v2, a Flask hook for the pages.
ROUTE = "registry.route"


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
