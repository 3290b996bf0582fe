"""What the registry does for the caching nginx in front of it
(deploy/nginx.conf), so that nginx may answer cached pulls alone and
nothing is lost: which answers it may keep and for how long, whether a
request's credentials are good, and the counting of what it answered.

- Keeping: an answer that may be kept says so in `X-Accel-Expires`, which
  nginx reads and never passes on (app/registry.py adds it).  A blob's
  bytes never change under its digest: a year.  A manifest by digest
  likewise, but for an hour at most, so that a pull by digest still
  reaches the registry often enough to mark what it uses against garbage
  collection.  A manifest by tag for two seconds: tags move.  Errors,
  redirects, 304s, ranges and X-Accel-Redirect answers are never kept.
- Credentials: nginx asks AUTH_PATH before every /v2 request (its
  `auth_request`), and keeps a yes AUTH_SECONDS per Authorization header.
  Anything but a yes is a 401, after which nginx hands the request itself
  to the registry, which refuses it as always (401, or 429 in a lockout).
  This check counts no failures, so a wrong password counts once.
- Counting: nginx reports each answer from its cache to
  NIXERY_FRONT_REPORTS, and the registry adds them to the counters its own
  answers go to (app/front_reports.py, app/front_file.py, app/front_udp.py).
"""
from __future__ import annotations

from .errors import RegistryError
from .scope import ROUTE

AUTH_PATH = "/_front/auth"
AUTH_SECONDS = 5
EXPIRES = "X-Accel-Expires"
BLOB_SECONDS = 365 * 24 * 3600
TAG_SECONDS = 2
DIGEST_SECONDS = 3600
# Blobs up to this size are sent by the registry and kept by nginx; larger
# ones are sent by nginx from the storage folder (NIXERY_BLOB_ACCEL), where
# a request's cost is small beside its bytes' and a cache copy would be big.
CACHED_BLOB_MAX = 8 << 20


def expires(seconds: float) -> tuple[str, str]:
    """The header that lets nginx keep an answer `seconds`."""
    return EXPIRES, str(int(seconds))


class FrontAuth:
    """WSGI: answers AUTH_PATH (200, or 401 with no body), everything else
    goes on to `app`.  `authenticator` is None when pulls need no
    credentials: then the answer is always yes."""

    def __init__(self, app, authenticator=None):
        self.app = app
        self.authenticator = authenticator

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") != AUTH_PATH:
            return self.app(environ, start_response)
        environ[ROUTE] = "front.auth"
        headers = [("Content-Length", "0")]
        auth = self.authenticator
        if auth is not None:
            try:
                environ["REMOTE_USER"] = auth.user_of(environ, count_failures=False)
            except RegistryError:
                start_response("401 Unauthorized", headers)
                return []
            if auth.user_header and auth.user_header in environ:
                # a user named by the proxy in front: its header is no part
                # of nginx's key, so this yes is not kept
                start_response("200 OK", headers)
                return []
        start_response("200 OK", [*headers, expires(AUTH_SECONDS)])
        return []
