"""The two requests a pull repeats most, answered below Flask.

Once an image is built, pulling it is a manifest GET by tag and a blob GET
per layer, and for a manifest or a small layer the cost of the request
itself (routing, request and response objects, hooks) outweighs the bytes
sent.  This middleware answers the plain cases before Flask sees them:

- a manifest by tag that this process holds in memory and whose tag it
  knows the revision of without asking storage or the package source;
- a whole blob that storage streams and that opens cleanly.

It sends the same headers, request id, metrics and access log line as the
Flask routes (app/registry.py), using their header helpers.  Everything
else falls through to Flask unchanged: builds, revisions to refresh, digest
references, ranges, conditional requests, redirects to signed URLs, and
every error (a missing or corrupt blob is made again or reported there, in
one place).

Blob bodies are read and sent in 1 MiB chunks.  gunicorn's sendfile(2)
path (`wsgi.file_wrapper`) was measured no faster here for 1 MB blobs, and
it leaves the access log's byte count at 0, so it is not used.
"""
from __future__ import annotations

import logging
import os

from builders import manifest
from builders.image import Image
from storage import keys
from storage.errors import CorruptObject, StorageError

from . import grammar, logs, metrics
from .registry import CORRUPT_FOUND, blob_headers, manifest_headers, negotiate, stream_blob

logger = logging.getLogger(__name__)

PREFIX = "/v2/"
# Headers that ask for something other than the whole object: Flask answers those.
NOT_PLAIN = ("HTTP_RANGE", "HTTP_IF_RANGE", "HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH",
             "HTTP_IF_MODIFIED_SINCE", "HTTP_IF_UNMODIFIED_SINCE")


class FastPath:
    def __init__(self, app, storage, images):
        self.app = app
        self.storage = storage
        self.images = images

    def __call__(self, environ, start_response):
        route = self._plain_pull(environ)
        if route is None:
            return self.app(environ, start_response)
        kind, name, reference = route
        rid = logs.new_request_id(environ.get("HTTP_X_REQUEST_ID"))
        token = logs.request_id.set(rid)
        try:
            if kind == "blobs":
                answer = self._blob(environ, reference)
            else:
                answer = self._manifest(environ, name, reference)
        except Exception:  # Flask answers with the registry's error format
            logger.exception("answering %s below Flask failed; handing it to the app",
                             environ.get("PATH_INFO"))
            answer = None
        finally:
            logs.request_id.reset(token)
        if answer is None:
            return self.app(environ, start_response)

        headers, body = answer
        method = environ["REQUEST_METHOD"]
        headers["X-Request-ID"] = rid
        start_response("200 OK", list(headers.items()))
        metrics.REQUESTS.labels(f"registry.{kind}", method, "200").inc()
        return body

    def _plain_pull(self, environ):
        """(kind, name, reference) for a GET or HEAD of a manifest or blob by
        a well-formed name, with no conditions or ranges; else None."""
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return None
        path = environ.get("PATH_INFO", "")
        if not path.startswith(PREFIX) or any(h in environ for h in NOT_PLAIN):
            return None
        m = grammar.ROUTE_RE.fullmatch(path, len(PREFIX))
        if not m or not grammar.valid_name(m.group("name")):
            return None
        return m.group("kind", "name", "reference")

    def _manifest(self, environ, name, tag):
        if not grammar.TAG_RE.fullmatch(tag):
            return None  # a digest, or an invalid tag
        record = self.images.in_memory(Image.from_name(name), tag)
        if record is None:
            return None
        media_type = negotiate([environ.get("HTTP_ACCEPT", "")])
        body = record.manifest(media_type)
        headers = manifest_headers(media_type, body, manifest.digest_of(body))
        if environ["REQUEST_METHOD"] == "HEAD":
            return headers, []
        metrics.BYTES_SERVED.labels("manifest").inc(len(body))
        return headers, [body]

    def _blob(self, environ, digest):
        if not grammar.DIGEST_RE.fullmatch(digest):
            return None
        key = keys.blob(digest)
        if self.storage.url(key) is not None:
            return None  # Flask redirects to it
        try:
            f = self.storage.open(key)
        except CorruptObject:
            environ[CORRUPT_FOUND] = digest  # storage set it aside: Flask makes it again or says so
            return None
        except StorageError:
            return None
        size = f.seek(0, os.SEEK_END)  # stream_blob seeks back to the start
        if environ["REQUEST_METHOD"] == "HEAD":
            f.close()
            return blob_headers(digest, size), []
        return blob_headers(digest, size), stream_blob(f, 0, size)
