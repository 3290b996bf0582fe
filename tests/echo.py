"""A WSGI app that answers with what it was asked, for tests that compare
HTTP servers: run under two of them, its answers differ only where the
servers read or answer a request differently.

The path picks the shape of the answer, so that every way a server frames
one is exercised: `/chunked...` has no length (chunked on HTTP/1.1),
`/nocontent...` is a 204, `/notmodified...` a 304, `/unread...` leaves the
body unread (the server must skip it before the next request); anything
else is a 200 with a Content-Length.
"""
from __future__ import annotations

import hashlib
import json


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    body = b"" if path.startswith("/unread") else environ["wsgi.input"].read()
    fields = sorted((k, v) for k, v in environ.items()
                    if k.startswith("HTTP_") or k in ("CONTENT_TYPE", "CONTENT_LENGTH"))
    seen = {
        "method": environ.get("REQUEST_METHOD"), "uri": environ.get("RAW_URI"),
        "path": path, "query": environ.get("QUERY_STRING"),
        "script_name": environ.get("SCRIPT_NAME"), "protocol": environ.get("SERVER_PROTOCOL"),
        "scheme": environ.get("wsgi.url_scheme"),
        # names in full, values by digest: a field may be 8 KB long
        "fields": [k for k, _ in fields], "values": _digest(repr(fields).encode()),
        "body": len(body), "body_digest": _digest(body),
    }
    answer = json.dumps(seen, sort_keys=True).encode()
    headers = [("Content-Type", "application/json"), ("X-Echo-Method", seen["method"])]
    if path.startswith("/nocontent"):
        start_response("204 No Content", headers)
        return []
    if path.startswith("/notmodified"):
        start_response("304 Not Modified", headers + [("ETag", '"e"')])
        return []
    if path.startswith("/chunked"):
        start_response("200 OK", headers)
        return [answer[:10], answer[10:]]
    start_response("200 OK", headers + [("Content-Length", str(len(answer)))])
    return [answer]
