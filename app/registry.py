"""The pull side of the Docker Registry HTTP API V2 / OCI distribution spec.

Every request under /v2 is answered here, by one handler per endpoint:
`base`, `manifest`, `blob`, `referrers` and `tags`.  `RegistryAPI` is their WSGI adapter: it
parses the path once, calls the handler, and renders any error it raised
with the one error renderer (app/errors.py).  Other paths go on to the
Flask app (pages, operators' endpoints).  The HTTP details they share
(negotiation, conditions, ranges, streaming) are in app/wire.py.

The API sits below Flask because a pull is a run of small requests (a
manifest, then blob after blob) and Flask's per-request work (contexts,
routing, hooks, response objects) cost about as much as answering a cached
manifest or a small layer.  The request id and the request metrics are
not here: app/scope.py gives them to every endpoint alike.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import urllib.parse

from builders.errors import BuildError
from builders.image import manifest
from builders.image.names import Image
from storage import keys
from storage.errors import CorruptObject, ObjectNotFound

from . import errors, front, grammar, metrics, quota, wire
from .errors import (BlobUnknown, DigestInvalid, ManifestUnknown, NameInvalid, NameUnknown,
                     PaginationInvalid, RangeInvalid, TagInvalid, Unsupported)
from .scope import REPLAY, ROUTE, Replayable
from .wire import API_VERSION, Call, Reply
from builders import digests

logger = logging.getLogger(__name__)

PREFIX = "/v2"
TAG_EXPIRES = front.expires(front.TAG_SECONDS)
TAG_REPLAY = Replayable("manifest", front.TAG_SECONDS)
BLOB_EXPIRES = front.expires(front.BLOB_SECONDS)


class RegistryAPI:
    """WSGI: /v2 requests to their handler, everything else to `app`."""

    def __init__(self, app, storage, images, blob_accel=None, digest_seconds=front.DIGEST_SECONDS):
        self.app = app
        self.storage = storage
        self.images = images
        # the web server's internal location of the storage folder, when it
        # sends blobs (deploy/nginx.conf)
        self.blob_accel = blob_accel
        # how long nginx may keep a manifest by digest: a pull of it must
        # reach the registry at least as often as it marks what it uses
        self.digest_expires = front.expires(min(front.DIGEST_SECONDS, digest_seconds))
        # given again by the worker as long as nginx may keep them (app/http/replay.py)
        self.digest_replay = Replayable("manifest", min(front.DIGEST_SECONDS, digest_seconds))

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if not path.startswith(PREFIX) or path[len(PREFIX):len(PREFIX) + 1] not in ("", "/"):
            return self.app(environ, start_response)
        call = Call(environ)
        try:
            reply = self.dispatch(call)
        except Exception as exc:
            error = errors.for_exception(exc, call.method, call.path)
            status, headers, body = error.render()
            reply = Reply(status, headers, [body], reason=wire.reason(error.message))
        reply.headers.append(API_VERSION)
        start_response(f"{reply.status} {reply.reason}" if reply.reason
                       else wire.STATUS_LINES[reply.status], reply.headers)
        if call.method == "HEAD":
            wire.close(reply.body)
            return []
        return reply.body

    def dispatch(self, call: Call) -> Reply:
        if call.method not in ("GET", "HEAD"):
            raise Unsupported(f"{call.method} is not supported: this registry is pull-only")
        rest = call.path[len(PREFIX):]
        if rest in ("", "/"):
            call.environ[ROUTE] = "registry.base"
            return Reply(200, [("Content-Type", "application/json"), ("Content-Length", "2")],
                         [b"{}"])
        m = grammar.ROUTE_RE.fullmatch(rest, 1)
        if not m:
            tags = grammar.TAGS_RE.fullmatch(rest, 1)
            if tags:
                call.environ[ROUTE] = "registry.tags"
                check_name(tags.group("name"))
                return self.tags(call, tags.group("name"))
            raise NameUnknown(f"no such endpoint: {call.path}; this registry serves "
                              "/v2/<name>/manifests/<reference>, /v2/<name>/blobs/<digest>, "
                              "/v2/<name>/referrers/<digest> and /v2/<name>/tags/list")
        name, kind, reference = m.group("name", "kind", "reference")
        call.environ[ROUTE] = f"registry.{kind}"
        check_name(name)
        if kind == "manifests":
            return self.manifest(call, name, reference)
        if kind == "referrers":
            return self.referrers(call, check_digest(reference))
        return self.blob(call, check_digest(reference))

    def manifest(self, call: Call, name: str, reference: str) -> Reply:
        """A manifest by tag (built on the first pull) or by digest."""
        if ":" in reference:  # tags cannot hold ':'; anything with one is meant as a digest
            digest = check_digest(reference)
            body = self.storage.read(keys.blob(digest))
            media_type = manifest.media_type_of(body) if body is not None else None
            if media_type is None:
                raise ManifestUnknown(f"manifest {digest} is unknown to this registry",
                                      {"digest": digest})
            # a pull by digest keeps its image as a pull by tag does
            self.images.mark_pulled(keys.blob(digest))
            keep = self.digest_expires
            replay = self.digest_replay
        elif grammar.REFERRERS_TAG_RE.fullmatch(reference):
            # the referrers tag schema, for clients that predate the API: the
            # same index, and the package source is not asked
            media_type = manifest.OCI_INDEX
            body = self._referrers_index(f"sha256:{reference[7:]}")
            digest = digests.digest_of(body)
            keep = replay = None  # it changes as referrers are added
        else:
            if not grammar.TAG_RE.fullmatch(reference):
                raise TagInvalid(f"invalid tag {reference!r}: tags are up to 128 letters, "
                                 "digits, '_', '.' and '-', not starting with '.' or '-'",
                                 {"tag": reference})
            accept = call.header("HTTP_ACCEPT") or ""
            try:
                image = Image.from_name(name)
                if not wire.admits_index(accept):
                    image = self.images.pinned(image)
                record = self.images.image(image, reference, client=quota.client_key(
                    call.environ.get("REMOTE_USER"), call.environ.get("REMOTE_ADDR")))
            except BuildError as e:
                # with where people can read why: docker shows little of an error
                raise errors.from_domain(e, build_page=call.url(f"/builds/{name}:{reference}"),
                                         subject=f"{name}:{reference}") from None
            media_type = wire.negotiate(accept, record.media_types)
            body = record.manifest(media_type)
            digest = digests.digest_of(body)
            keep, replay = TAG_EXPIRES, TAG_REPLAY
        headers = [("Content-Type", media_type), ("Docker-Content-Digest", digest),
                   ("ETag", f'"{digest}"')]
        if wire.not_modified(call, digest):
            return Reply(304, headers)
        headers.append(("Content-Length", str(len(body))))
        if keep:
            headers.append(keep)
        if replay:
            call.environ[REPLAY] = replay
        if call.method == "GET":
            metrics.MANIFEST_BYTES.inc(len(body))
        return Reply(200, headers, [body])

    def referrers(self, call: Call, digest: str) -> Reply:
        """The manifests whose subject is `digest` (an image's SBOM), as an
        OCI image index; an empty one for a digest with none, or unknown
        here, as the distribution spec says.  `artifactType` filters."""
        query = urllib.parse.parse_qs(call.environ.get("QUERY_STRING", ""))
        wanted = query.get("artifactType")
        headers = [("Content-Type", manifest.OCI_INDEX)]
        if wanted:
            headers.append(("OCI-Filters-Applied", "artifactType"))
        # a query decodes `+` as a space, and `application/vnd.cyclonedx+json`
        # typed as it is would never match: media types hold no spaces
        body = self._referrers_index(
            digest, {w.replace(" ", "+") for w in wanted} if wanted else None)
        headers.append(("Content-Length", str(len(body))))
        return Reply(200, headers, [body])

    def _referrers_index(self, digest, artifact_types=None) -> bytes:
        data = self.storage.read(keys.referrers(digest))
        descriptors = json.loads(data)["manifests"] if data else []
        if artifact_types is not None:
            descriptors = [d for d in descriptors if d.get("artifactType") in artifact_types]
        return manifest.render_referrers(descriptors)

    def tags(self, call: Call, name: str) -> Reply:
        """The tags the image `name` may be pulled by, `n` at a time after
        `last`, with a Link to the next page, as the distribution spec says."""
        query = urllib.parse.parse_qs(call.environ.get("QUERY_STRING", ""))
        last = query.get("last", [""])[0]
        raw_n = query.get("n", [None])[0]
        try:
            n = None if raw_n in (None, "") else int(raw_n)
            if n is not None and n < 0:
                raise ValueError
        except ValueError:
            raise PaginationInvalid(f"n must be a whole number of tags, not {raw_n!r}",
                                    {"n": raw_n}) from None
        try:
            image = Image.from_name(name)
        except BuildError as e:  # a name that is no image has no tags
            raise NameUnknown(e.message, {"name": name}) from None
        tags = [t for t in self.images.tags(image) if t > last and grammar.TAG_RE.fullmatch(t)]
        headers = [("Content-Type", "application/json")]
        if n is not None and len(tags) > n:
            tags = tags[:n]
            if tags:  # n=0 asks for none, and there is no next page of none
                query = urllib.parse.urlencode({"n": n, "last": tags[-1]})
                headers.append(("Link", f'</v2/{name}/tags/list?{query}>; rel="next"'))
        body = json.dumps({"name": name, "tags": tags}).encode()
        headers.append(("Content-Length", str(len(body))))
        return Reply(200, headers, [body])

    def blob(self, call: Call, digest: str) -> Reply:
        """A blob's bytes (or a redirect to them), whole or a range."""
        f = None
        if call.method == "GET" and not self.blob_accel:
            f = self._checked_blob(digest, self.storage.open)  # its bytes may be sent from here
            size = f.seek(0, os.SEEK_END)
        else:
            size = self._checked_blob(digest, self.storage.size)
        # the web server in front sends big blobs; small ones are sent from
        # here, for it to keep (app/front.py)
        accel = self.blob_accel and size > front.CACHED_BLOB_MAX
        headers = [("Docker-Content-Digest", digest), ("ETag", f'"{digest}"'), wire.BLOB_CACHE]
        if call.method == "GET":
            url = self.storage.url(keys.blob(digest))
            if url:
                wire.close(f)
                return Reply(307, [*headers, ("Location", url), ("Content-Length", "0")])
        if wire.not_modified(call, digest):
            wire.close(f)
            return Reply(304, headers)
        headers.append(("Content-Type", "application/octet-stream"))
        if accel and call.method == "GET":
            # checked (and made again if it was missing) above: the web
            # server in front sends the file, ranges included, and says
            # Accept-Ranges itself (nginx keeps this answer's Cache-Control
            # and Content-Type, so one of its own would be a second one)
            metrics.BLOB_BYTES.inc(size)
            # an empty body with its length: without one gunicorn sends it
            # chunked, and nginx then drops the upstream connection
            # instead of keeping it alive for the next request
            return Reply(200, [*headers, ("Content-Length", "0"), (
                "X-Accel-Redirect", f"{self.blob_accel}{keys.blob(digest)}")])
        headers.append(("Accept-Ranges", "bytes"))
        start, stop, status = 0, size, 200
        span = wire.requested_range(call, digest, size)
        if span is not None:
            start, stop = span
            if start >= stop:
                wire.close(f)
                raise RangeInvalid(f"range {call.header('HTTP_RANGE')!r} is outside the blob's "
                                   f"{size} bytes", headers={"Content-Range": f"bytes */{size}"})
            status = 206
            headers.append(("Content-Range", f"bytes {start}-{stop - 1}/{size}"))
        headers.append(("Content-Length", str(stop - start)))
        if status == 200:
            headers.append(BLOB_EXPIRES)
            unchanged = None if accel else self.storage.unchanged(keys.blob(digest))
            if unchanged is not None:
                # given again while storage says the file is the one checked
                call.environ[REPLAY] = Replayable(
                    "blob", front.BLOB_SECONDS, unchanged,
                    functools.partial(self.storage.open, keys.blob(digest)))
        if call.method == "HEAD":
            return Reply(status, headers)
        if f is None:
            f = self._checked_blob(digest, self.storage.open)
        return Reply(status, headers, wire.stream_blob(f, start, stop))

    def _checked_blob(self, digest, look):
        """`look` (the storage's open or size) at the blob, checked against
        its digest; a missing or corrupt one is made again from its source
        when the registry knows how."""
        key = keys.blob(digest)
        try:
            return look(key)
        except ObjectNotFound as e:
            if self.images.layerstore.restore_blob(digest):
                return look(key)
            if isinstance(e, CorruptObject):
                raise BlobUnknown(f"blob {digest} was corrupt in storage and could not be made "
                                  "again; it has been removed", {"digest": digest}) from None
            raise BlobUnknown(f"blob {digest} is unknown to this registry",
                              {"digest": digest}) from None


def check_name(name):
    if len(name) > grammar.NAME_MAX:
        raise NameInvalid(f"repository name is longer than {grammar.NAME_MAX} characters")
    if not grammar.valid_name(name):
        raise NameInvalid(
            f"invalid repository name {name!r}: use lower-case package names separated by '/', "
            "e.g. shell/git/htop", {"name": name})


def check_digest(reference):
    if not grammar.DIGEST_RE.fullmatch(reference):
        raise DigestInvalid(f"invalid digest {reference!r}: expected sha256:<64 hex digits>",
                            {"digest": reference})
    return reference
