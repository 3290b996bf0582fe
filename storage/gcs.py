"""Storage in a Google Cloud Storage bucket, shared by every registry instance.

What the bucket guarantees is what makes several instances safe on one
bucket: an upload becomes visible only once complete, the server checks the
MD5 we send with it, and `if_generation_match` makes writes conditional.
On top of that this driver checks the bytes it is given against their MD5
and, under a content-addressed key, their sha256 before any request is made.
Which failures are retried, and how: storage/gcs_retry.py; uploads:
storage/gcs_upload.py; credentials and signed URLs: storage/gcs_signing.py.
"""
from __future__ import annotations

import datetime
import io
import logging

import google.auth.credentials
from google.api_core import exceptions as api
from google.cloud import storage as gcs

from . import gcs_signing, gcs_upload
from .base import ObjectInfo, Storage
from .errors import ObjectNotFound, StorageUnavailable
from .gcs_retry import FAILURES, ONCE, TIMEOUT, Retries, detail, short, status
from .ranged import RangedReader
from .uploads import check_key, seekable_copy, verify

logger = logging.getLogger(__name__)

GOOGLE_ENDPOINT = "https://storage.googleapis.com"

# Bytes fetched per ranged GET when the registry streams a blob itself.
READ_SIZE = 4 << 20


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
            creds = gcs_signing.load_key_file(credentials_file)
        if endpoint:
            data_creds = google.auth.credentials.AnonymousCredentials()
            options = {"api_endpoint": endpoint}
            self.public_endpoint = endpoint
        else:
            if creds is None:
                creds = gcs_signing.default_credentials()
            data_creds, options = creds, None
            self.public_endpoint = GOOGLE_ENDPOINT
        # project=None: bucket operations need none, and looking one up
        # would query the environment or the metadata server.
        self._client = gcs.Client(project=None, credentials=data_creds, client_options=options)
        self._bucket = self._client.bucket(bucket)
        self._signer = (gcs_signing.Signer(creds, seconds=url_seconds,
                                           endpoint=self.public_endpoint)
                        if gcs_signing.can_sign(creds) else None)
        logger.info("storing in %s at %s; blob URLs %s", self.name, self.public_endpoint,
                    "signed" if self._signer else "streamed through the registry")

    # -- errors ---------------------------------------------------------------

    def unavailable(self, message) -> StorageUnavailable:
        return StorageUnavailable(f"{self.name}: {message}")

    def _retries(self, what) -> Retries:
        return Retries(self.name, what, self.retry_seconds)

    def _failed(self, what, exc, retries: Retries | None = None) -> StorageUnavailable:
        """A failure that retrying does not fix, or that retries did not
        fix in time (the library's RetryError), for people."""
        if isinstance(exc, api.RetryError) and retries is not None:
            return retries.gave_up(exc.cause)
        logger.error("%s: %s failed: %s", self.name, what, detail(exc))
        code = status(exc)
        if code in (401, 403):
            reason = "access denied; the registry's credentials need read and write access"
        elif code == 404:
            reason = "the bucket does not exist"
        else:
            reason = short(exc)
        return self.unavailable(f"{what}: {reason}")

    # -- reading --------------------------------------------------------------

    def _metadata(self, key, retries=None):
        """The object's metadata (a Blob), or None when there is none."""
        check_key(key)
        retries = retries or self._retries(f"looking up {key}")
        try:
            return self._bucket.get_blob(key, timeout=TIMEOUT, retry=retries.policy())
        except FAILURES as e:
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
        retries = self._retries(f"reading {key}")
        try:
            return self._bucket.blob(key).download_as_bytes(
                raw_download=True, checksum=None, timeout=TIMEOUT, retry=retries.policy())
        except api.NotFound:
            return None
        except FAILURES as e:
            raise self._failed(f"reading {key}", e, retries) from e

    def _download(self, blob, start, end):
        what = f"reading {blob.name}"
        retries = self._retries(what)
        try:
            return blob.download_as_bytes(start=start, end=end, raw_download=True, checksum=None,
                                          timeout=TIMEOUT, retry=retries.policy())
        except api.NotFound:
            raise ObjectNotFound(blob.name) from None
        except FAILURES as e:
            raise self._failed(what, e, retries) from e

    # -- writing --------------------------------------------------------------

    def put(self, key, fileobj, *, size, md5, content_type="application/octet-stream"):
        check_key(key)
        with seekable_copy(fileobj, size) as (src, start):
            verify(key, src, start, size, md5, self.expected_sha256(key))
            gcs_upload.store(self, key, src, start, size, md5, content_type)

    def put_spooled(self, key, spool, *, size, sha256, md5=None,
                    content_type="application/octet-stream"):
        """The writer's MD5 goes with the upload and Cloud Storage checks
        it, so the spooled bytes are not read and hashed here first."""
        check_key(key)
        self._vouched(key, spool, size, sha256, md5)
        gcs_upload.store(self, key, spool.file, 0, size, md5, content_type)
        spool.stored = True

    # -- conditional writes of small records -------------------------------------

    def read_versioned(self, key):
        meta = self._metadata(key)
        if meta is None:
            return None
        what = f"reading {key}"
        retries = self._retries(what)
        pinned = self._bucket.blob(key, generation=meta.generation)
        try:
            data = pinned.download_as_bytes(raw_download=True, checksum=None, timeout=TIMEOUT,
                                            retry=retries.policy())
        except api.NotFound:
            return None  # replaced or removed since we looked: as good as absent
        except FAILURES as e:
            raise self._failed(what, e, retries) from e
        return data, str(meta.generation)

    def put_if(self, key, data, *, version):
        check_key(key)
        what = f"writing {key}"
        retries = self._retries(what)
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
        except FAILURES as e:
            raise self._failed(what, e, retries) from e

    def check(self):
        try:
            self._bucket.get_blob("readyz/probe", timeout=(3, 5), retry=ONCE)
        except Exception as e:  # one try: a probe asks again soon
            raise self.unavailable(f"not answering: {short(e)}") from e

    # -- collection -------------------------------------------------------------

    def list(self, prefix):
        what = f"listing {prefix}"
        retries = self._retries(what)
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
        except FAILURES as e:
            raise self._failed(what, e, retries) from e

    def mark_used(self, key):
        """Sets the object's customTime to now: a metadata update, which a
        bucket lifecycle rule on daysSinceCustomTime reads too."""
        check_key(key)
        what = f"marking {key} used"
        retries = self._retries(what)
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
        except FAILURES as e:
            raise self._failed(what, e, retries) from e
        return True

    def delete_if(self, key, version):
        """Conditional on the generation (not rewritten) and metageneration
        (not marked used) the listing saw."""
        check_key(key)
        generation, metageneration = (int(v) for v in version.split(":"))
        what = f"deleting {key}"
        retries = self._retries(what)
        try:
            self._bucket.blob(key).delete(
                if_generation_match=generation, if_metageneration_match=metageneration,
                timeout=TIMEOUT, retry=retries.conditional())
        except (api.NotFound, api.PreconditionFailed):
            return False
        except FAILURES as e:
            raise self._failed(what, e, retries) from e
        return True

    # -- signed URLs ----------------------------------------------------------

    def url(self, key):
        if self._signer is None:
            return None
        check_key(key)
        return self._signer.url(self._bucket.blob(key))


class _ObjectReader(RangedReader):
    """One generation of an object: a rewritten object is never read mixed."""

    def __init__(self, store: GCSStorage, meta):
        super().__init__(meta.size)
        self._store = store
        self._blob = store._bucket.blob(meta.name, generation=meta.generation)

    def _fetch(self, first, last):
        data = self._store._download(self._blob, first, last)
        if not data:
            raise self._store.unavailable(f"reading {self._blob.name}: no data at {first}")
        return data

    def readall(self):
        # the rest in one request, not a range per buffer
        if self._pos >= self._size:
            return b""
        data = self._store._download(self._blob, self._pos, self._size - 1)
        self._pos += len(data)
        return data
