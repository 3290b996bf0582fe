"""How long a request to Google Cloud Storage may take, which of its failures
are worth another try, and how one storage operation retries them: with
google.api_core's retries, within the operation's time (GCS_RETRY_SECONDS)."""
from __future__ import annotations

import functools
import http.client
import logging
import time

import google.auth.exceptions
import requests
from google.api_core import exceptions as api
from google.api_core.retry import Retry, exponential_sleep_generator, retry_target
from google.cloud.storage import exceptions as media
from google.cloud.storage.retry import ConditionalRetryPolicy, is_generation_specified

from .errors import StorageUnavailable

logger = logging.getLogger(__name__)

# (connect, read) seconds for one HTTP request.
TIMEOUT = (10, 120)
FIRST_BACKOFF = 0.25
MAX_BACKOFF = 8.0

# What a call to the library raises when it failed: its API errors (the
# RetryError of retries that ran out of time among them) and auth's.
FAILURES = (api.GoogleAPIError, google.auth.exceptions.GoogleAuthError)

# A request tried once: a readiness probe asks again soon, and a request of
# an upload is retried by starting the whole upload over (Retries.whole).
ONCE = Retry(predicate=lambda exc: False)


def status(exc) -> int | None:
    """The HTTP status a failure carries, if any."""
    if isinstance(exc, api.GoogleAPICallError):
        return exc.code
    if isinstance(exc, media.InvalidResponse):
        return getattr(exc.response, "status_code", None)
    return None


def transient(exc: BaseException) -> bool:
    """Whether trying the same request again may succeed."""
    code = status(exc)
    if code is not None:
        return code in (408, 429) or code >= 500
    return isinstance(exc, (
        requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
        ConnectionError, TimeoutError, http.client.HTTPException,
        google.auth.exceptions.TransportError, media.DataCorruption))


def short(exc: BaseException) -> str:
    """What went wrong, in a few words fit for a client's error message
    (no URLs or internals: the log has those)."""
    code = status(exc)
    if code is not None:
        return f"HTTP {code} ({type(exc).__name__})"
    if isinstance(exc, (requests.Timeout, TimeoutError)):
        return "timed out"
    text = str(exc).lower()
    for word in ("refused", "reset", "aborted"):
        if word in text:
            return f"connection {word}"
    if isinstance(exc, (requests.ConnectionError, ConnectionError, http.client.HTTPException)):
        return "connection failed"
    return type(exc).__name__


def detail(exc: BaseException) -> str:
    """One line about a failure, for the log."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


class Retries:
    """The retries of one operation on `where` (the bucket): transient
    failures tried again with exponential backoff and jitter (instances that
    failed together do not retry together), each logged, all within
    `seconds`."""

    def __init__(self, where: str, what: str, seconds: float):
        self.where = where
        self.what = what
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.failures = 0

    def policy(self) -> Retry:
        """The library's retries of one request, in what is left of the
        operation's time."""
        return Retry(predicate=transient, initial=FIRST_BACKOFF, maximum=MAX_BACKOFF,
                     multiplier=2.0, timeout=max(0.0, self.deadline - time.monotonic()),
                     on_error=self._failed)

    def conditional(self) -> ConditionalRetryPolicy:
        """The same for a write with a precondition (if_generation_match),
        which is what makes it safe to send again: the library checks that
        the request carries one."""
        return ConditionalRetryPolicy(self.policy(), is_generation_specified, ["query_params"])

    def whole(self, fn, *args, **kwargs):
        """fn(*args, **kwargs), tried again whole until the operation's time
        is up: an upload, started over from the first byte of its source."""
        return retry_target(functools.partial(fn, *args, **kwargs), transient, self._pauses(),
                            on_error=self._failed_in_time)

    def gave_up(self, exc) -> StorageUnavailable:
        """What the request is told once the operation's time is up."""
        logger.error("%s: %s failed %d times, giving up: %s",
                     self.where, self.what, self.failures, detail(exc))
        return StorageUnavailable(
            f"{self.where}: {self.what} failed {self.failures} times in {self.seconds:g}s, "
            f"last with {short(exc)}")

    def _failed(self, exc):
        self.failures += 1
        logger.warning("%s: %s failed (%s)", self.where, self.what, detail(exc))

    def _failed_in_time(self, exc):
        self._failed(exc)
        if time.monotonic() >= self.deadline:
            raise self.gave_up(exc) from exc

    def _pauses(self):
        # the library's backoff, each pause cut short at the operation's end,
        # so that the last try is made then
        for pause in exponential_sleep_generator(FIRST_BACKOFF, MAX_BACKOFF, multiplier=2.0):
            yield min(pause, max(0.0, self.deadline - time.monotonic()))
