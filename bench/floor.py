"""The worker's floor behind nginx, for bench/nginx.py.

A WSGI app that answers a blob GET as the registry does behind nginx
(NIXERY_BLOB_ACCEL: its headers, an empty body and X-Accel-Redirect to the
blob's file) but checks and counts nothing, run by gunicorn.conf.py like
the registry: the same worker class, workers, threads, keepalive and access
log.  What nginx in front of it reaches is what any registry behind the same
gunicorn could reach on this machine, whatever its own work costs.

    gunicorn -c gunicorn.conf.py bench.floor:app
"""
from __future__ import annotations

import os

from app.front import AUTH_PATH, AUTH_SECONDS, expires
from app.wire import API_VERSION, BLOB_CACHE
from storage import keys

ACCEL = "/_registry_blobs/"  # deploy/nginx.conf's internal location


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == AUTH_PATH:  # nginx's question, answered as the registry does without auth
        start_response("200 OK", [("Content-Length", "0"), expires(AUTH_SECONDS)])
        return [b""]
    if "/blobs/" not in path:  # /healthz, /v2/: what the benchmark waits on
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2")])
        return [b"{}"]
    digest = path.rsplit("/", 1)[1]
    start_response("200 OK", [
        ("Docker-Content-Digest", digest), ("ETag", f'"{digest}"'), BLOB_CACHE,
        ("Content-Type", "application/octet-stream"),
        ("Content-Length", "0"), ("X-Accel-Redirect", f"{ACCEL}{keys.blob(digest)}"),
        API_VERSION, ("X-Request-ID", environ.get("HTTP_X_REQUEST_ID") or os.urandom(16).hex())])
    return [b""]
