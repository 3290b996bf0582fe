"""Storage in an S3 bucket (AWS, or MinIO, Cloudflare R2, Ceph RGW...).

boto3 is configured by its own settings, not the registry's: the endpoint
(AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, for a service other than AWS),
AWS_REGION, the credential chain (keys, a profile, web identity for
Kubernetes service accounts, instance roles) and the shared config file
(path-style addressing: `s3 = addressing_style = path`).  Retries are
botocore's standard mode.

As with GCS, several instances share one bucket safely: an object appears
only once complete, every PUT carries the Content-MD5 of the bytes (the
service refuses a body that does not match), and the writes that must not
race are conditional (If-None-Match: * and If-Match with the ETag).  Where
the service does not check the MD5 (emulators), the driver compares the
ETag it reports and takes a mismatched object back.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import io
import logging
import threading
import time

import boto3
import botocore.config
import botocore.exceptions
from cachetools import TTLCache

from . import s3_upload
from .base import ObjectInfo, Storage
from .errors import ObjectNotFound, StorageUnavailable
from .ranged import RangedReader
from .uploads import check_key, seekable_copy, verify

logger = logging.getLogger(__name__)

# One PUT holds up to 5 GiB; larger blobs go in parts of PART_SIZE.
MULTIPART_ABOVE = 5 << 30
PART_SIZE = 256 << 20
READ_SIZE = 4 << 20
# How long a presigned blob URL is valid; it is handed out for half of it.
URL_SECONDS = 300


class S3Storage(Storage):
    """Objects in one bucket, keys are object names.  `client` is a boto3 S3
    client (tests point one at moto's server); by default boto3 makes one
    from its own settings.  The bucket is checked at start: missing
    credentials or a missing bucket stop the registry with one line."""

    def __init__(self, bucket: str, *, client=None, url_seconds: int = URL_SECONDS,
                 multipart_above: int = MULTIPART_ABOVE, part_size: int = PART_SIZE):
        self.bucket = bucket
        self.name = f"S3 bucket {bucket}"
        self.url_seconds = url_seconds
        self.multipart_above, self.part_size = multipart_above, part_size
        self._s3 = client or boto3.client("s3", config=botocore.config.Config(
            retries={"mode": "standard"}, connect_timeout=10, read_timeout=120))
        self._urls = TTLCache(maxsize=4096, ttl=max(1, url_seconds // 2))
        self._urls_lock = threading.Lock()
        self._call("opening the bucket", self._s3.head_bucket, Bucket=bucket)
        logger.info("storing in %s at %s", self.name, self._s3.meta.endpoint_url)

    # -- errors ---------------------------------------------------------------

    @staticmethod
    def code_of(exc) -> str:
        """The S3 error code of a failure, or ""."""
        if isinstance(exc, botocore.exceptions.ClientError):
            return str(exc.response.get("Error", {}).get("Code", ""))
        return ""

    def _failed(self, what, exc) -> StorageUnavailable:
        """A failure that botocore's retries did not fix, for people."""
        code = self.code_of(exc)
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            reason = ("no AWS credentials found (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                      "a profile, or a web identity token)")
        elif code in ("NoSuchBucket", "404") and what == "opening the bucket":
            reason = f"the bucket does not exist at {self._s3.meta.endpoint_url}"
        elif code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            reason = f"access denied ({code}); the registry's credentials need read and write access"
        else:
            reason = code or type(exc).__name__
        logger.error("%s: %s failed: %s", self.name, what, exc)
        return StorageUnavailable(f"{self.name}: {what}: {reason}")

    def _call(self, what, fn, **kwargs):
        try:
            return fn(**kwargs)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            raise self._failed(what, e) from e

    def _head(self, key) -> dict | None:
        check_key(key)
        try:
            return self._s3.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as e:
            if self.code_of(e) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._failed(f"looking up {key}", e) from e
        except botocore.exceptions.BotoCoreError as e:
            raise self._failed(f"looking up {key}", e) from e

    # -- reading --------------------------------------------------------------

    def exists(self, key):
        return self._head(key) is not None

    def size(self, key):
        head = self._head(key)
        if head is None:
            raise ObjectNotFound(key)
        return head["ContentLength"]

    def open(self, key):
        head = self._head(key)
        if head is None:
            raise ObjectNotFound(key)
        return io.BufferedReader(_ObjectReader(self, key, head), buffer_size=READ_SIZE)

    def _get(self, key, **kwargs) -> dict | None:
        try:
            return self._s3.get_object(Bucket=self.bucket, Key=key, **kwargs)
        except botocore.exceptions.ClientError as e:
            if self.code_of(e) in ("NoSuchKey", "404", "PreconditionFailed", "412"):
                return None  # gone, or replaced since it was looked up
            raise self._failed(f"reading {key}", e) from e
        except botocore.exceptions.BotoCoreError as e:
            raise self._failed(f"reading {key}", e) from e

    def read(self, key):
        check_key(key)
        got = self._get(key)
        return None if got is None else got["Body"].read()

    def read_versioned(self, key):
        check_key(key)
        got = self._get(key)
        return None if got is None else (got["Body"].read(), got["ETag"])

    # -- writing --------------------------------------------------------------

    def put(self, key, fileobj, *, size, md5, content_type="application/octet-stream"):
        check_key(key)
        with seekable_copy(fileobj, size) as (src, start):
            verify(key, src, start, size, md5, self.expected_sha256(key))
            s3_upload.store(self, key, src, start, size, md5, content_type)

    def put_spooled(self, key, spool, *, size, sha256, md5=None,
                    content_type="application/octet-stream"):
        """A single PUT carries the writer's MD5, which the service checks,
        so the spooled bytes are not read and hashed here first; an upload
        in parts (no whole MD5) is checked here, as put() checks it."""
        if size > self.multipart_above and self.expected_sha256(key):
            return super().put_spooled(key, spool, size=size, sha256=sha256, md5=md5,
                                       content_type=content_type)
        check_key(key)
        self._vouched(key, spool, size, sha256, md5)
        s3_upload.store(self, key, spool.file, 0, size, md5, content_type)
        spool.stored = True

    def put_if(self, key, data, *, version):
        check_key(key)
        condition = {"IfMatch": version} if version else {"IfNoneMatch": "*"}
        try:
            answer = self._s3.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType="application/json",
                ContentMD5=base64.b64encode(hashlib.md5(data).digest()).decode(),
                **condition)
            return answer["ETag"]
        except botocore.exceptions.ClientError as e:
            if self.code_of(e) not in ("PreconditionFailed", "412", "ConditionalRequestConflict",
                                       "409"):
                raise self._failed(f"writing {key}", e) from e
        except botocore.exceptions.BotoCoreError as e:
            raise self._failed(f"writing {key}", e) from e
        # botocore retries a PUT whose answer was lost: then what is there
        # now is ours
        current = self.read_versioned(key)
        return current[1] if current is not None and current[0] == data else None

    def check(self):
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            raise StorageUnavailable(f"{self.name}: not answering: "
                                     f"{self.code_of(e) or type(e).__name__}") from e

    # -- collection -------------------------------------------------------------

    def list(self, prefix):
        pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                   Prefix=prefix)
        try:
            for page in pages:
                listed = time.time()
                for item in page.get("Contents", ()):
                    yield ObjectInfo(item["Key"], item["Size"], item["LastModified"].timestamp(),
                                     _version(item["ETag"], item["LastModified"], listed))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            raise self._failed(f"listing {prefix}", e) from e

    def mark_used(self, key):
        """Copies the object onto itself with new metadata: its
        LastModified moves (what a lifecycle rule on age reads too); the
        bytes stay.  (Over 5 GiB a copy needs parts: such objects are not
        marked, and a collection may take them, to be made again.)"""
        head = self._head(key)
        if head is None:
            return False
        try:
            self._s3.copy_object(
                Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": key},
                CopySourceIfMatch=head["ETag"], MetadataDirective="REPLACE",
                ContentType=head.get("ContentType", "application/octet-stream"),
                Metadata={"used": datetime.datetime.now(datetime.timezone.utc).isoformat()})
        except botocore.exceptions.ClientError as e:
            if self.code_of(e) in ("NoSuchKey", "404", "PreconditionFailed", "412"):
                return self.exists(key)  # replaced meanwhile: written, as good as used
            raise self._failed(f"marking {key} used", e) from e
        except botocore.exceptions.BotoCoreError as e:
            raise self._failed(f"marking {key} used", e) from e
        return True

    def delete_if(self, key, version):
        """If the object is as listed (its ETag and LastModified, and not
        marked used since the listing), then If-Match on its ETag.  S3 has
        no precondition on LastModified for general purpose buckets: an
        object marked used in the moment between the look and the delete
        goes, and a pull makes a blob again."""
        head = self._head(key)
        etag, modified, listed = version.split("@")
        if head is None or head["ETag"].strip('"') != etag or \
                f"{head['LastModified'].timestamp():.3f}" != modified:
            return False
        used = head.get("Metadata", {}).get("used")
        if used and datetime.datetime.fromisoformat(used).timestamp() > float(listed):
            return False  # marked within the second it was listed in
        try:
            self._s3.delete_object(Bucket=self.bucket, Key=key, IfMatch=head["ETag"])
        except botocore.exceptions.ClientError as e:
            if self.code_of(e) in ("NoSuchKey", "404", "PreconditionFailed", "412"):
                return False
            raise self._failed(f"deleting {key}", e) from e
        except botocore.exceptions.BotoCoreError as e:
            raise self._failed(f"deleting {key}", e) from e
        return True

    # -- presigned URLs ---------------------------------------------------------

    def url(self, key):
        check_key(key)
        with self._urls_lock:
            url = self._urls.get(key)
        if url is None:
            url = self._s3.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key},
                ExpiresIn=self.url_seconds)
            with self._urls_lock:
                self._urls[key] = url
        return url


def _version(etag, modified, listed) -> str:
    """What a conditional delete compares: the object's ETag and
    LastModified (to the second), and when it was listed, since a mark in
    the same second leaves both as they were."""
    return f"{etag.strip(chr(34))}@{modified.timestamp():.3f}@{listed:.3f}"


class _ObjectReader(RangedReader):
    """One version of an object (If-Match on its ETag): a rewritten object
    is never read mixed."""

    def __init__(self, store: S3Storage, key, head):
        super().__init__(head["ContentLength"])
        self._store, self._key, self._etag = store, key, head["ETag"]

    def _fetch(self, first, last):
        got = self._store._get(self._key, Range=f"bytes={first}-{last}", IfMatch=self._etag)
        if got is None:
            raise ObjectNotFound(self._key)  # replaced or deleted while it was read
        return got["Body"].read()
