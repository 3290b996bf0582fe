"""Registry errors and the one place every failure becomes a response.

Errors render as the distribution spec's `{"errors": [{code, message,
detail}]}`.  Docker prints the message of a 4xx answer but only the status
of a 5xx, so failures retrying cannot fix are 4xx with a message saying
what to do.  No stack trace ever reaches a client.
"""
from __future__ import annotations

import logging

from flask import Response, json, request
from werkzeug.exceptions import HTTPException

from builders import errors as build
from storage import errors as storage

logger = logging.getLogger(__name__)


class RegistryError(Exception):
    """An error answer: `code` and `status` per subclass, message and detail per case."""

    code = "UNKNOWN"
    status = 500

    def __init__(self, message, detail=None, *, status=None, headers=None):
        super().__init__(message)
        self.message = message
        self.detail = detail
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def response(self) -> Response:
        body = {"errors": [{"code": self.code, "message": self.message,
                            "detail": self.detail if self.detail is not None else {}}]}
        resp = Response(json.dumps(body) + "\n", status=self.status, mimetype="application/json")
        resp.headers.update(self.headers)
        return resp


class NameInvalid(RegistryError):
    code, status = "NAME_INVALID", 400


class NameUnknown(RegistryError):
    code, status = "NAME_UNKNOWN", 404


class TagInvalid(RegistryError):
    code, status = "TAG_INVALID", 400


class DigestInvalid(RegistryError):
    code, status = "DIGEST_INVALID", 400


class BlobUnknown(RegistryError):
    code, status = "BLOB_UNKNOWN", 404


class ManifestUnknown(RegistryError):
    code, status = "MANIFEST_UNKNOWN", 404


class RangeInvalid(RegistryError):
    code, status = "RANGE_INVALID", 416


class Unsupported(RegistryError):
    code, status = "UNSUPPORTED", 405


class BuildFailed(RegistryError):
    """The packages exist but cannot be built: retrying will not help."""
    code, status = "BUILD_FAILED", 422


class BuildTimeout(RegistryError):
    code, status = "BUILD_TIMEOUT", 504


class SourceUnavailable(RegistryError):
    code, status = "SOURCE_UNAVAILABLE", 502


class TooManyRequests(RegistryError):
    code, status = "TOOMANYREQUESTS", 429


class StorageUnavailable(RegistryError):
    code, status = "STORAGE_UNAVAILABLE", 503


class InternalError(RegistryError):
    code, status = "UNKNOWN", 500


def _log_detail(e):
    detail = {}
    if e.log_tail:
        detail["log"] = e.log_tail
    if getattr(e, "build_page", None):
        detail["build_page"] = e.build_page
    return detail or None


# Domain errors -> registry errors, in one table.
_DOMAIN = {
    build.PackagesNotFound: lambda e: ManifestUnknown(
        e.message, dict({"missing": [{"name": n, "did_you_mean": m} for n, m in e.missing]},
                        **(_log_detail(e) or {}))),
    build.PackageUnbuildable: lambda e: BuildFailed(e.message, _log_detail(e)),
    build.BuildFailed: lambda e: BuildFailed(e.message, _log_detail(e)),
    build.BuildTimeout: lambda e: BuildTimeout(e.message, dict(
        {"limit_seconds": e.limit, "setting": "NIX_TIMEOUT"}, **(_log_detail(e) or {}))),
    build.SourceUnavailable: lambda e: SourceUnavailable(e.message, _log_detail(e)),
    build.InvalidImage: lambda e: ManifestUnknown(e.message),
    build.BuildQueueFull: lambda e: TooManyRequests(
        e.message, {"retry_after_seconds": e.retry_after},
        headers={"Retry-After": str(e.retry_after)}),
    build.RevisionNotFound: lambda e: ManifestUnknown(e.message),
    storage.StorageUnavailable: lambda e: StorageUnavailable(f"storage is unavailable: {e}"),
    storage.IntegrityError: lambda e: StorageUnavailable(f"storage rejected a write: {e}"),
    storage.ObjectNotFound: lambda e: BlobUnknown(f"no object {e}"),
}


def to_registry_error(exc: BaseException) -> RegistryError:
    if isinstance(exc, RegistryError):
        return exc
    for cls in type(exc).__mro__:
        if cls in _DOMAIN:
            return _DOMAIN[cls](exc)
    if isinstance(exc, HTTPException):
        return _http_error(exc)
    logger.exception("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return InternalError("internal server error; the registry's log has the details")


def _http_error(exc: HTTPException) -> RegistryError:
    if exc.code == 405:
        return Unsupported(f"{request.method} is not supported: this registry is pull-only")
    if exc.code == 404:
        return NameUnknown(f"no such endpoint: {request.path}")
    error = RegistryError(exc.description or exc.name, status=exc.code)
    error.code = "UNSUPPORTED" if exc.code < 500 else "UNKNOWN"
    return error


def register(app):
    @app.errorhandler(Exception)
    def handle(exc):
        error = to_registry_error(exc)
        if error.status >= 500:
            logger.warning("%s %s -> %d %s: %s", request.method, request.path,
                           error.status, error.code, error.message)
        return error.response()
