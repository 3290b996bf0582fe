"""The pull side of the Docker Registry HTTP API V2 / OCI distribution spec."""
from __future__ import annotations

import logging
import os

from flask import Blueprint, Response, current_app, g, redirect, request, url_for
from werkzeug.routing import PathConverter

from builders import manifest
from builders.errors import BuildError
from builders.image import Image
from storage import keys
from storage.errors import CorruptObject, ObjectNotFound

from . import grammar, metrics
from .errors import (BlobUnknown, DigestInvalid, ManifestUnknown, NameInvalid,
                     NameUnknown, RangeInvalid, TagInvalid, Unsupported)

logger = logging.getLogger(__name__)

bp = Blueprint("registry", __name__)

API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
CHUNK = 1 << 20
# Set in the WSGI environ by app/fastpath.py when it found the blob corrupt
# (and storage set it aside) before handing the request here.
CORRUPT_FOUND = "registry.corrupt_blob"


class AnyPathConverter(PathConverter):
    """Like `path`, but also matching control characters, so the grammar
    checks (not a routing 404) answer them."""
    regex = r"[\s\S]*?"
    part_isolating = False  # spans '/'


@bp.after_request
def api_version(resp):
    resp.headers.update(API_VERSION)
    return resp


@bp.route("/v2/", methods=ALL_METHODS)
@bp.route("/v2", methods=ALL_METHODS)
def base():
    _pull_only()
    return Response("{}", mimetype="application/json")


@bp.route("/v2/<anypath:rest>", methods=ALL_METHODS)
def dispatch(rest):
    _pull_only()
    m = grammar.ROUTE_RE.fullmatch(rest)
    if not m:
        raise NameUnknown(f"no such endpoint: /v2/{rest}; this registry serves "
                          "/v2/<name>/manifests/<reference> and /v2/<name>/blobs/<digest>")
    name, kind, reference = m.group("name", "kind", "reference")
    g.route = f"registry.{kind}"
    _check_name(name)
    if kind == "manifests":
        return _manifest(name, reference)
    return _blob(_check_digest(reference))


def _pull_only():
    if request.method not in ("GET", "HEAD"):
        raise Unsupported(f"{request.method} is not supported: this registry is pull-only")


def _check_name(name):
    if len(name) > grammar.NAME_MAX:
        raise NameInvalid(f"repository name is longer than {grammar.NAME_MAX} characters")
    if not grammar.valid_name(name):
        raise NameInvalid(
            f"invalid repository name {name!r}: use lower-case package names separated by '/', "
            "e.g. shell/git/htop", {"name": name})


def _check_digest(reference):
    if not grammar.DIGEST_RE.fullmatch(reference):
        raise DigestInvalid(f"invalid digest {reference!r}: expected sha256:<64 hex digits>",
                            {"digest": reference})
    return reference


def _manifest(name, reference):
    if ":" in reference:  # tags cannot hold ':'; anything with one is meant as a digest
        digest = _check_digest(reference)
        body = current_app.extensions["storage"].read(keys.blob(digest))
        media_type = manifest.media_type_of(body) if body is not None else None
        if media_type is None:
            raise ManifestUnknown(f"manifest {digest} is unknown to this registry",
                                  {"digest": digest})
    else:
        if not grammar.TAG_RE.fullmatch(reference):
            raise TagInvalid(f"invalid tag {reference!r}: tags are up to 128 letters, digits, "
                             "'_', '.' and '-', not starting with '.' or '-'", {"tag": reference})
        try:
            record = current_app.extensions["images"].image(Image.from_name(name), reference)
        except BuildError as e:
            # where the user can read why: Docker shows little of an error
            e.build_page = url_for("web.build", ref=f"{name}:{reference}", _external=True)
            raise
        media_type = negotiate(request.headers.getlist("Accept"))
        body = record.manifest(media_type)
        digest = manifest.digest_of(body)
    if request.method == "GET":
        metrics.BYTES_SERVED.labels("manifest").inc(len(body))
    return Response(body, headers=manifest_headers(media_type, body, digest))


def manifest_headers(media_type, body, digest) -> dict[str, str]:
    """The headers of a manifest's response; this route and the fast path
    (app/fastpath.py) both send them."""
    return {"Content-Type": media_type, "Content-Length": str(len(body)),
            "Docker-Content-Digest": digest, "ETag": f'"{digest}"', **API_VERSION}


def negotiate(accept_headers) -> str:
    """Docker schema 2 or OCI, whichever the client lists with the higher
    quality (the earlier on a tie); Docker schema 2 when it names neither."""
    best, best_q = manifest.DOCKER_MANIFEST, -1.0
    for header in accept_headers:
        for item in header.split(","):
            parts = [p.strip() for p in item.split(";")]
            q = 1.0
            for param in parts[1:]:
                if param.startswith("q="):
                    try:
                        q = float(param[2:])
                    except ValueError:
                        q = 0.0
            if parts[0] in manifest.MANIFEST_TYPES and q > 0 and q > best_q:
                best, best_q = parts[0], q
    return best


def blob_headers(digest, size) -> dict[str, str]:
    """The headers of a whole blob's response; this route and the fast path
    (app/fastpath.py) both send them."""
    return {"Content-Type": "application/octet-stream", "Content-Length": str(size),
            "Docker-Content-Digest": digest, "ETag": f'"{digest}"', "Accept-Ranges": "bytes",
            "Cache-Control": "max-age=31536000, immutable", **API_VERSION}


def _blob(digest):
    f = _open_blob(digest)
    size = f.seek(0, os.SEEK_END)
    headers = blob_headers(digest, size)
    if request.method == "GET":
        url = current_app.extensions["storage"].url(keys.blob(digest))
        if url:
            f.close()
            return redirect(url, code=307, Response=None)
    start, stop, status = 0, size, 200
    rng = request.range
    if rng is not None and len(rng.ranges) == 1:
        span = rng.range_for_length(size)
        if span is None:
            f.close()
            raise RangeInvalid(f"range {request.headers.get('Range')!r} is outside the blob's "
                               f"{size} bytes", headers={"Content-Range": f"bytes */{size}"})
        start, stop = span
        status = 206
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    headers["Content-Length"] = str(stop - start)
    if request.method == "HEAD":
        f.close()
        return Response(status=status, headers=headers)
    return Response(stream_blob(f, start, stop), status=status, headers=headers,
                    direct_passthrough=True)


def _open_blob(digest):
    """The blob, checked against its digest; a missing or corrupt one is made
    again from its source when the registry knows how."""
    storage = current_app.extensions["storage"]
    key = keys.blob(digest)
    try:
        return storage.open(key)
    except ObjectNotFound as e:
        corrupt = isinstance(e, CorruptObject) or request.environ.get(CORRUPT_FOUND) == digest
        if current_app.extensions["images"].restore_blob(digest):
            return storage.open(key)
        if corrupt:
            raise BlobUnknown(f"blob {digest} was corrupt in storage and could not be made "
                              "again; it has been removed", {"digest": digest}) from None
        raise BlobUnknown(f"blob {digest} is unknown to this registry", {"digest": digest}) from None


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
        metrics.BYTES_SERVED.labels("blob").inc(taken)
