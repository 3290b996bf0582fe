"""Storage in a Google Cloud Storage bucket, shared by every registry instance.

What the bucket guarantees is what makes several instances safe on one
bucket: an upload becomes visible only once complete, the server checks the
MD5 we send with it, and `if_generation_match` makes writes conditional.
On top of that this driver checks the bytes it is given against their MD5
and, under a content-addressed key, their sha256 before any request is made.
"""
from __future__ import annotations

import base64
import datetime
import functools
import http.client
import io
import json
import logging
import threading
import time

import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport.requests
import requests
from cachetools import TTLCache
from google.api_core import exceptions as api
from google.api_core.retry import Retry, exponential_sleep_generator, retry_target
from google.cloud import storage as gcs
from google.cloud.storage import exceptions as media
from google.cloud.storage.retry import ConditionalRetryPolicy, is_generation_specified

from .base import ObjectInfo, Storage
from .errors import IntegrityError, ObjectNotFound, StorageUnavailable
from .uploads import check_key, seekable_copy, verify

logger = logging.getLogger(__name__)

GOOGLE_ENDPOINT = "https://storage.googleapis.com"
SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write"]

# Resumable uploads hold one chunk in memory at a time; the library's
# default (100 MiB) would hold most layers whole.  Uploads of at most
# 8 MiB go in one request, so no upload holds more than this.
CHUNK_SIZE = 8 << 20
# Bytes fetched per ranged GET when the registry streams a blob itself.
READ_SIZE = 4 << 20
# (connect, read) seconds for one HTTP request.
TIMEOUT = (10, 120)
FIRST_BACKOFF = 0.25
MAX_BACKOFF = 8.0


def _status(exc) -> int | None:
    if isinstance(exc, api.GoogleAPICallError):
        return exc.code
    if isinstance(exc, media.InvalidResponse):
        return getattr(exc.response, "status_code", None)
    return None


def transient(exc: BaseException) -> bool:
    """Whether trying the same request again may succeed."""
    status = _status(exc)
    if status is not None:
        return status in (408, 429) or status >= 500
    return isinstance(exc, (
        requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
        ConnectionError, TimeoutError, http.client.HTTPException,
        google.auth.exceptions.TransportError, media.DataCorruption))


def _short(exc: BaseException) -> str:
    """What went wrong, in a few words fit for a client's error message
    (no URLs or internals: the log has those)."""
    status = _status(exc)
    if status is not None:
        return f"HTTP {status} ({type(exc).__name__})"
    if isinstance(exc, (requests.Timeout, TimeoutError)):
        return "timed out"
    text = str(exc).lower()
    for word in ("refused", "reset", "aborted"):
        if word in text:
            return f"connection {word}"
    if isinstance(exc, (requests.ConnectionError, ConnectionError, http.client.HTTPException)):
        return "connection failed"
    return type(exc).__name__


def _detail(exc: BaseException) -> str:
    """One line about a failure, for the log."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


# What a call to the library raises when it failed: its API errors (the
# RetryError of retries that ran out of time among them) and auth's.
_FAILURES = (api.GoogleAPIError, google.auth.exceptions.GoogleAuthError)


# A request tried once: a readiness probe asks again soon, and a request of
# an upload is retried by starting the whole upload over (_Retries.whole).
ONCE = Retry(predicate=lambda exc: False)


class _Retries:
    """The retries of one storage operation, by google.api_core: transient
    failures tried again with exponential backoff and jitter (instances that
    failed together do not retry together), each logged, all within the
    operation's time (GCS_RETRY_SECONDS)."""

    def __init__(self, store: "GCSStorage", what: str):
        self.store = store
        self.what = what
        self.deadline = time.monotonic() + store.retry_seconds
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
                     self.store.name, self.what, self.failures, _detail(exc))
        return self.store.unavailable(
            f"{self.what} failed {self.failures} times in {self.store.retry_seconds:g}s, "
            f"last with {_short(exc)}")

    def _failed(self, exc):
        self.failures += 1
        logger.warning("%s: %s failed (%s)", self.store.name, self.what, _detail(exc))

    def _failed_in_time(self, exc):
        self._failed(exc)
        if time.monotonic() >= self.deadline:
            raise self.gave_up(exc) from exc

    def _pauses(self):
        # the library's backoff, each pause cut short at the operation's end,
        # so that the last try is made then
        for pause in exponential_sleep_generator(FIRST_BACKOFF, MAX_BACKOFF, multiplier=2.0):
            yield min(pause, max(0.0, self.deadline - time.monotonic()))


class GCSStorage(Storage):
    """Objects in one bucket, keys are object names.

    `endpoint` points the driver at an emulator (fake-gcs-server): requests
    then go unauthenticated, and signed URLs point at the emulator too.
    `credentials_file` is a key file (GOOGLE_APPLICATION_CREDENTIALS); without
    one, Application Default Credentials are used.  Blob URLs are signed when
    the credentials can sign: a service-account key locally, the instance's
    own service account through IAM signBlob.  Otherwise `url` answers None
    and the registry streams blobs itself.
    """

    def __init__(self, bucket: str, *, credentials_file: str | None = None,
                 endpoint: str | None = None, retry_seconds: float = 30.0,
                 url_seconds: int = 300, credentials=None):
        self.bucket_name = bucket
        self.name = f"Google Cloud Storage bucket {bucket}"
        self.retry_seconds = retry_seconds
        self.url_seconds = url_seconds
        creds = credentials
        if creds is None and credentials_file:
            creds = _load_key_file(credentials_file)
        if endpoint:
            data_creds = google.auth.credentials.AnonymousCredentials()
            options = {"api_endpoint": endpoint}
            self.public_endpoint = endpoint
        else:
            if creds is None:
                creds = _default_credentials()
            data_creds, options = creds, None
            self.public_endpoint = GOOGLE_ENDPOINT
        # project=None: bucket operations need none, and looking one up
        # would query the environment or the metadata server.
        self._client = gcs.Client(project=None, credentials=data_creds, client_options=options)
        self._bucket = self._client.bucket(bucket)
        self._signer = creds if _can_sign(creds) else None
        self._signer_lock = threading.Lock()
        self._signing_failed = False
        # A URL is handed out for at most half its life, so a client always
        # has minutes to use it.
        self._urls = TTLCache(maxsize=4096, ttl=max(1, url_seconds // 2))
        self._urls_lock = threading.Lock()
        logger.info("storing in %s at %s; blob URLs %s", self.name, self.public_endpoint,
                    "signed" if self._signer else "streamed through the registry")

    # -- errors ---------------------------------------------------------------

    def unavailable(self, message) -> StorageUnavailable:
        return StorageUnavailable(f"{self.name}: {message}")

    def _failed(self, what, exc, retries: _Retries | None = None) -> StorageUnavailable:
        """A failure that retrying does not fix, or that retries did not
        fix in time (the library's RetryError), for people."""
        if isinstance(exc, api.RetryError) and retries is not None:
            return retries.gave_up(exc.cause)
        logger.error("%s: %s failed: %s", self.name, what, _detail(exc))
        status = _status(exc)
        if status in (401, 403):
            reason = "access denied; the registry's credentials need read and write access"
        elif status == 404:
            reason = "the bucket does not exist"
        else:
            reason = _short(exc)
        return self.unavailable(f"{what}: {reason}")

    # -- reading --------------------------------------------------------------

    def _metadata(self, key, retries=None):
        """The object's metadata (a Blob), or None when there is none."""
        check_key(key)
        retries = retries or _Retries(self, f"looking up {key}")
        try:
            return self._bucket.get_blob(key, timeout=TIMEOUT, retry=retries.policy())
        except _FAILURES as e:
            raise self._failed(f"looking up {key}", e, retries) from e

    def exists(self, key):
        return self._metadata(key) is not None

    def open(self, key):
        meta = self._metadata(key)
        if meta is None:
            raise ObjectNotFound(key)
        return io.BufferedReader(_ObjectReader(self, meta), buffer_size=READ_SIZE)

    def size(self, key):
        meta = self._metadata(key)
        if meta is None:
            raise ObjectNotFound(key)
        return meta.size

    def read(self, key):
        # One request for the small objects (records, manifests) read whole.
        check_key(key)
        retries = _Retries(self, f"reading {key}")
        try:
            return self._bucket.blob(key).download_as_bytes(
                raw_download=True, checksum=None, timeout=TIMEOUT, retry=retries.policy())
        except api.NotFound:
            return None
        except _FAILURES as e:
            raise self._failed(f"reading {key}", e, retries) from e

    def _download(self, blob, start, end):
        what = f"reading {blob.name}"
        retries = _Retries(self, what)
        try:
            return blob.download_as_bytes(start=start, end=end, raw_download=True, checksum=None,
                                          timeout=TIMEOUT, retry=retries.policy())
        except api.NotFound:
            raise ObjectNotFound(blob.name) from None
        except _FAILURES as e:
            raise self._failed(what, e, retries) from e

    # -- writing --------------------------------------------------------------

    def put(self, key, fileobj, *, size, md5, content_type="application/octet-stream"):
        check_key(key)
        with seekable_copy(fileobj, size) as (src, start):
            verify(key, src, start, size, md5, self.expected_sha256(key))
            self._store(key, src, start, size, md5, content_type)

    def _store(self, key, src, start, size, md5, content_type):
        md5_b64 = base64.b64encode(bytes.fromhex(md5)).decode()
        retries = _Retries(self, f"storing {key}")
        while True:
            current = self._metadata(key, retries)
            if current is not None and current.md5_hash == md5_b64 and current.size == size:
                logger.debug("%s is already stored", key)
                return
            if current is not None:
                # A fragment of an earlier broken write, or an older record:
                # replace exactly that generation and nothing newer.
                logger.info("replacing %s: stored MD5 %s, size %s; writing MD5 %s, size %d",
                            key, current.md5_hash, current.size, md5_b64, size)
            generation = current.generation if current is not None else 0
            try:
                retries.whole(self._upload, key, src, start, size, md5_b64, content_type,
                              generation)
                return
            except api.PreconditionFailed as e:
                # Someone else wrote the key since we looked: look again; the
                # same content is success, anything else is replaced.
                logger.info("%s was written concurrently; checking what is there", key)
                if time.monotonic() > retries.deadline:
                    raise self.unavailable(f"storing {key}: kept losing races with other "
                                           "writers") from e
            except api.BadRequest as e:
                # What Cloud Storage answers when the bytes it got do not
                # match the MD5 sent with them.
                logger.error("%s: upload of %s refused: %s", self.name, key, _detail(e))
                raise IntegrityError(f"{key}: {self.name} refused the upload: {_short(e)}") from e
            except _FAILURES as e:
                raise self._failed(f"storing {key}", e, retries) from e

    def _upload(self, key, src, start, size, md5_b64, content_type, generation):
        blob = self._bucket.blob(key, chunk_size=CHUNK_SIZE)
        # Sent in the object's metadata: Cloud Storage computes the MD5 of
        # what it received and refuses to create the object on a mismatch.
        blob.md5_hash = md5_b64
        src.seek(start)
        blob.upload_from_file(src, size=size, content_type=content_type,
                              if_generation_match=generation, checksum=None,
                              timeout=TIMEOUT, retry=ONCE)
        if blob.md5_hash != md5_b64 or blob.size != size:
            # Only a server that does not check MD5s gets here (emulators);
            # take the object back before anyone trusts it.
            logger.error("%s: stored MD5 %s, size %s, expected %s, %d; deleting it",
                         key, blob.md5_hash, blob.size, md5_b64, size)
            try:
                blob.delete(if_generation_match=blob.generation, timeout=TIMEOUT,
                            retry=_Retries(self, f"deleting {key}").conditional())
            except api.GoogleAPIError as e:
                logger.error("%s: could not delete the mismatched object: %s", key, _detail(e))
            raise IntegrityError(f"{key}: {self.name} stored MD5 {blob.md5_hash}, size "
                                 f"{blob.size} instead of {md5_b64}, {size}")

    # -- conditional writes of small records -------------------------------------

    def read_versioned(self, key):
        meta = self._metadata(key)
        if meta is None:
            return None
        what = f"reading {key}"
        retries = _Retries(self, what)
        pinned = self._bucket.blob(key, generation=meta.generation)
        try:
            data = pinned.download_as_bytes(raw_download=True, checksum=None, timeout=TIMEOUT,
                                            retry=retries.policy())
        except api.NotFound:
            return None  # replaced or removed since we looked: as good as absent
        except _FAILURES as e:
            raise self._failed(what, e, retries) from e
        return data, str(meta.generation)

    def put_if(self, key, data, *, version):
        check_key(key)
        what = f"writing {key}"
        retries = _Retries(self, what)
        blob = self._bucket.blob(key)
        try:
            blob.upload_from_string(data, content_type="application/json",
                                    if_generation_match=int(version) if version else 0,
                                    timeout=TIMEOUT, retry=retries.conditional())
            return str(blob.generation)
        except api.PreconditionFailed:
            if retries.failures:
                # an earlier attempt may have been written though its answer
                # was lost: then what is there now is ours
                current = self.read_versioned(key)
                if current is not None and current[0] == data:
                    return current[1]
            return None
        except _FAILURES as e:
            raise self._failed(what, e, retries) from e

    def check(self):
        try:
            self._bucket.get_blob("readyz/probe", timeout=(3, 5), retry=ONCE)
        except Exception as e:  # one try: a probe asks again soon
            raise self.unavailable(f"not answering: {_short(e)}") from e

    # -- collection -------------------------------------------------------------

    def list(self, prefix):
        what = f"listing {prefix}"
        retries = _Retries(self, what)
        try:
            pages = self._client.list_blobs(self._bucket, prefix=prefix, timeout=TIMEOUT,
                                            retry=retries.policy()).pages
            for page in pages:
                for blob in page:
                    # written (this generation created) or, later, marked used;
                    # not `updated`, which any change of metadata moves
                    used = (blob.custom_time or blob.time_created or blob.updated).timestamp()
                    yield ObjectInfo(blob.name, blob.size or 0, used,
                                     f"{blob.generation}:{blob.metageneration}")
        except _FAILURES as e:
            raise self._failed(what, e, retries) from e

    def mark_used(self, key):
        """Sets the object's customTime to now: a metadata update, which a
        bucket lifecycle rule on daysSinceCustomTime reads too."""
        check_key(key)
        what = f"marking {key} used"
        retries = _Retries(self, what)
        blob = self._bucket.blob(key)
        blob.custom_time = datetime.datetime.now(datetime.timezone.utc)
        try:
            blob.patch(timeout=TIMEOUT, retry=retries.policy())
        except api.NotFound:
            return False
        except api.BadRequest as e:
            # customTime may not go back: an object marked later than our
            # clock says now is in use anyway
            if "customTime" in str(e) or "custom time" in str(e).lower():
                return True
            raise self._failed(what, e) from e
        except _FAILURES as e:
            raise self._failed(what, e, retries) from e
        return True

    def delete_if(self, key, version):
        """Conditional on the generation (not rewritten) and metageneration
        (not marked used) the listing saw."""
        check_key(key)
        generation, metageneration = (int(v) for v in version.split(":"))
        what = f"deleting {key}"
        retries = _Retries(self, what)
        try:
            self._bucket.blob(key).delete(
                if_generation_match=generation, if_metageneration_match=metageneration,
                timeout=TIMEOUT, retry=retries.conditional())
        except (api.NotFound, api.PreconditionFailed):
            return False
        except _FAILURES as e:
            raise self._failed(what, e, retries) from e
        return True

    # -- signed URLs ----------------------------------------------------------

    def url(self, key):
        if self._signer is None:
            return None
        check_key(key)
        with self._urls_lock:
            url = self._urls.get(key)
        if url is not None:
            return url
        try:
            url = self._sign(key)
        except Exception as e:  # a URL is an optimisation: stream instead of failing the pull
            level = logging.DEBUG if self._signing_failed else logging.WARNING
            self._signing_failed = True
            logger.log(level, "cannot sign a URL for %s, streaming it instead: %s", key, _detail(e))
            return None
        with self._urls_lock:
            self._urls[key] = url
        return url

    def _sign(self, key):
        blob = self._bucket.blob(key)
        expiration = datetime.timedelta(seconds=self.url_seconds)
        if isinstance(self._signer, google.auth.credentials.Signing):
            return blob.generate_signed_url(
                version="v4", method="GET", expiration=expiration,
                credentials=self._signer, api_access_endpoint=self.public_endpoint)
        # No private key here (Compute Engine, GKE, Cloud Run): IAM signBlob
        # signs as the instance's service account, with its access token.
        with self._signer_lock:
            if not self._signer.valid:
                self._signer.refresh(google.auth.transport.requests.Request())
            email, token = self._signer.service_account_email, self._signer.token
        return blob.generate_signed_url(
            version="v4", method="GET", expiration=expiration,
            service_account_email=email, access_token=token,
            api_access_endpoint=self.public_endpoint)


class _ObjectReader(io.RawIOBase):
    """One generation of an object, read with ranged GETs, so a reader
    seeks freely and never mixes two versions of a rewritten object."""

    def __init__(self, store: GCSStorage, meta):
        self._store = store
        self._blob = store._bucket.blob(meta.name, generation=meta.generation)
        self._size = meta.size
        self._pos = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer):
        if self._pos >= self._size or not len(buffer):
            return 0
        n = min(len(buffer), self._size - self._pos)
        data = self._store._download(self._blob, self._pos, self._pos + n - 1)
        if not data:
            raise self._store.unavailable(f"reading {self._blob.name}: no data at {self._pos}")
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def readall(self):
        if self._pos >= self._size:
            return b""
        data = self._store._download(self._blob, self._pos, self._size - 1)
        self._pos += len(data)
        return data


def _can_sign(creds) -> bool:
    if creds is None:
        return False
    if isinstance(creds, google.auth.credentials.Signing):
        return True
    # Compute Engine style credentials: IAM signBlob with the account's token.
    return bool(getattr(creds, "service_account_email", None))


def _load_key_file(path):
    """Credentials from the operator's own key file (GOOGLE_APPLICATION_CREDENTIALS)."""
    from google.oauth2 import service_account
    try:
        with open(path) as f:
            info = json.load(f)
        if info.get("type") == "service_account":
            return service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
        # other kinds (user, workload identity federation) authenticate
        # requests but cannot sign URLs
        creds, _ = google.auth.load_credentials_from_dict(info, scopes=SCOPES)
        return creds
    except (OSError, ValueError, google.auth.exceptions.GoogleAuthError) as e:
        raise StorageUnavailable(f"cannot use GOOGLE_APPLICATION_CREDENTIALS {path}: "
                                 f"{_detail(e)}") from e


def _default_credentials():
    try:
        creds, _ = google.auth.default(scopes=SCOPES)
    except google.auth.exceptions.GoogleAuthError as e:
        raise StorageUnavailable(
            "Google Cloud Storage needs credentials: set GOOGLE_APPLICATION_CREDENTIALS to a "
            f"service-account key, or run with an attached service account ({_detail(e)})") from e
    return creds
