"""Registry errors and the one place every failure becomes a response.

Errors render as the distribution spec's `{"errors": [{code, message,
detail}]}`.  Docker prints the message of a 4xx answer but only the status
of a 5xx, so failures retrying cannot fix are 4xx with a message saying
what to do.  No stack trace ever reaches a client.
"""
from __future__ import annotations

import json
import logging

from flask import Response, request
from gunicorn.http import errors as http_errors
from werkzeug.exceptions import HTTPException

from builders import errors as build
from storage import errors as storage

from . import metrics

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

    def render(self) -> tuple[int, list[tuple[str, str]], bytes]:
        """Status, headers and body of the answer: the one rendering of every error."""
        body = {"errors": [{"code": self.code, "message": self.message,
                            "detail": self.detail if self.detail is not None else {}}]}
        data = (json.dumps(body) + "\n").encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                   *self.headers.items()]
        return self.status, headers, data


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


class PaginationInvalid(RegistryError):
    code, status = "PAGINATION_NUMBER_INVALID", 400


class RangeInvalid(RegistryError):
    code, status = "RANGE_INVALID", 416


class Unsupported(RegistryError):
    code, status = "UNSUPPORTED", 405


class BuildFailed(RegistryError):
    """The packages exist but cannot be built: retrying will not help."""
    code, status = "BUILD_FAILED", 422


class BuildTimeout(RegistryError):
    # a 4xx, so that docker, podman and skopeo print why (they show the
    # body of a 4xx answer, never of a 5xx); retrying at once would not help
    code, status = "BUILD_TIMEOUT", 422


class BuildInterrupted(RegistryError):
    """The machine stopped the build (a builder killed, a full disk, Nix out
    of reach): nothing is wrong with the image and a later pull builds it,
    so a 5xx (the status line still carries the message, for containerd)."""
    code, status = "BUILD_INTERRUPTED", 503


class SourceUnavailable(RegistryError):
    code, status = "SOURCE_UNAVAILABLE", 502


class TooManyRequests(RegistryError):
    code, status = "TOOMANYREQUESTS", 429


class StorageUnavailable(RegistryError):
    code, status = "STORAGE_UNAVAILABLE", 503


class RequestInvalid(RegistryError):
    """A request the server could not read (gunicorn's parser refused it)."""
    code, status = "REQUEST_INVALID", 400


class InternalError(RegistryError):
    code, status = "UNKNOWN", 500


def _detail(e, build_page=None, **more):
    detail = dict(more)
    if e.log_tail:
        detail["log"] = e.log_tail
    if build_page:
        detail["build_page"] = build_page
    return detail or None


def _in_progress(e, page, subject):
    message = f"{subject or 'the image'} is {e.message}"
    if page:
        message += f"; progress at {page}"
    detail = _detail(e, page, retry_after_seconds=e.retry_after, progress=e.progress,
                     seconds=round(e.seconds))
    return TooManyRequests(message, detail, headers={"Retry-After": str(e.retry_after)})


def _quota(e):
    metrics.REFUSALS.labels("quota").inc()
    return TooManyRequests(e.message, {"retry_after_seconds": e.retry_after,
                                       "setting": "NIXERY_CLIENT_BUILDS"},
                           headers={"Retry-After": str(e.retry_after)})


# Domain errors -> registry errors, in one table.  `page` is where people
# can read about the build and `subject` the image asked for, when the
# request was for an image.
_DOMAIN = {
    build.PackagesNotFound: lambda e, page: ManifestUnknown(e.message, _detail(
        e, page, missing=[{"name": n, "did_you_mean": m} for n, m in e.missing])),
    build.PackageUnbuildable: lambda e, page: BuildFailed(e.message, _detail(e, page)),
    build.BuildFailed: lambda e, page: BuildFailed(e.message, _detail(e, page)),
    build.BuildTimeout: lambda e, page: BuildTimeout(e.message, _detail(
        e, page, limit_seconds=e.limit, setting="NIX_TIMEOUT")),
    build.BuildInterrupted: lambda e, page: BuildInterrupted(e.message, _detail(
        e, page, cause=e.cause, retry_after_seconds=e.retry_after),
        headers={"Retry-After": str(e.retry_after)}),
    build.SourceUnavailable: lambda e, page: SourceUnavailable(e.message, _detail(e, page)),
    build.InvalidImage: lambda e, page: ManifestUnknown(e.message),
    build.BuildQueueFull: lambda e, page: TooManyRequests(
        e.message, {"retry_after_seconds": e.retry_after},
        headers={"Retry-After": str(e.retry_after)}),
    build.RevisionNotFound: lambda e, page: ManifestUnknown(e.message),
    build.QuotaExceeded: lambda e, page: _quota(e),
    # any other build error, e.g. one remembered by a newer version of the registry
    build.BuildError: lambda e, page: BuildFailed(e.message, _detail(e, page)),
    storage.StorageUnavailable: lambda e, page: StorageUnavailable(f"storage is unavailable: {e}"),
    storage.IntegrityError: lambda e, page: StorageUnavailable(f"storage rejected a write: {e}"),
    storage.ObjectNotFound: lambda e, page: BlobUnknown(f"no object {e}"),
}


def from_domain(exc: BaseException, *, build_page: str | None = None,
                subject: str | None = None) -> RegistryError | None:
    """The registry error a domain error maps to, or None if it is not one."""
    if isinstance(exc, build.BuildInProgress):
        return _in_progress(exc, build_page, subject)  # it names the image
    for cls in type(exc).__mro__:
        if cls in _DOMAIN:
            return _DOMAIN[cls](exc, build_page)
    return None


def for_exception(exc: BaseException, method: str, path: str) -> RegistryError:
    """The answer to any exception a request met, for every endpoint; the
    registry's own faults (5xx) are logged, unexpected ones with their trace."""
    if isinstance(exc, RegistryError):
        error = exc
    else:
        error = from_domain(exc)
        if error is None and isinstance(exc, HTTPException):
            error = _http_error(exc, method, path)
        if error is None:
            logger.error("unhandled error on %s %s", method, path, exc_info=exc)
            error = InternalError("internal server error; the registry's log has the details")
    if error.status >= 500:
        logger.warning("%s %s -> %d %s: %s", method, path, error.status, error.code,
                       error.message)
    return error


# gunicorn's refusals that are not a plain 400
_UNREADABLE_STATUS = {
    http_errors.LimitRequestLine: 414,
    http_errors.LimitRequestHeaders: 431,
    http_errors.ExpectationFailed: 417,
    http_errors.UnsupportedTransferCoding: 501,
    http_errors.ForbiddenProxyRequest: 403,
}


def for_unreadable_request(exc: BaseException) -> RegistryError | None:
    """The answer to a request gunicorn could not read (a malformed request
    line or header, one over its limits), or None if `exc` is not such a
    refusal: the app's own faults and the server's (an invalid response
    header, a bad SCRIPT_NAME) are gunicorn's 500."""
    if (not isinstance(exc, http_errors.ParseException)
            or isinstance(exc, (http_errors.InvalidResponseHeader,
                                http_errors.InvalidResponseHeaderName,
                                http_errors.ConfigurationProblem))):
        return None
    status = next((s for cls, s in _UNREADABLE_STATUS.items() if isinstance(exc, cls)), 400)
    return RequestInvalid(f"the request could not be read: {exc}", status=status)


def for_tls_on_plain_http() -> RegistryError:
    """The answer to a TLS handshake sent to the plain HTTP port."""
    return RequestInvalid("this registry speaks plain HTTP here, not HTTPS: pull with "
                          "--tls-verify=false (podman, skopeo), or list it in docker's "
                          "insecure-registries")


def _http_error(exc: HTTPException, method, path) -> RegistryError:
    if exc.code == 405:
        return Unsupported(f"{method} is not supported: this registry is pull-only")
    if exc.code == 404:
        return NameUnknown(f"no such endpoint: {path}")
    error = RegistryError(exc.description or exc.name, status=exc.code)
    error.code = "UNSUPPORTED" if exc.code < 500 else "UNKNOWN"
    return error


def register(app):
    """Flask's pages answer errors the same way as /v2 does."""
    @app.errorhandler(Exception)
    def handle(exc):
        status, headers, body = for_exception(exc, request.method, request.path).render()
        return Response(body, status=status, headers=headers)
