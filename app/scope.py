"""What every request gets, whichever endpoint answers it: an id, carried by
each log line written for it (layer threads included, see
builders/layerstore.py) and sent back as X-Request-ID, and its count in the
request metrics, by route, method and status."""
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
            metrics.REQUESTS.labels(environ.get(ROUTE, "unmatched"),
                                    environ.get("REQUEST_METHOD", ""), status[:3]).inc()
            return start_response(status, headers, exc_info)

        try:
            body = self.app(environ, start)
        finally:
            logs.request_id.reset(token)
        if isinstance(body, list):
            return body  # nothing runs while it is sent
        return _Scoped(body, rid)


class _Scoped:
    """A streamed body, run under its request's id: a chunk read from storage
    may log (a retry, a failure) after the app returned."""

    def __init__(self, body, rid):
        self.body = body
        self.rid = rid

    def __iter__(self):
        it = iter(self.body)
        while True:
            token = logs.request_id.set(self.rid)
            try:
                chunk = next(it)
            except StopIteration:
                return
            finally:
                logs.request_id.reset(token)
            yield chunk

    def close(self):
        close = getattr(self.body, "close", None)
        if close is not None:
            token = logs.request_id.set(self.rid)
            try:
                close()
            finally:
                logs.request_id.reset(token)
