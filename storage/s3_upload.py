"""Uploads of blobs to an S3 bucket.

Every PUT carries the Content-MD5 of its bytes (the service refuses a body
that does not match), and where the service does not check (emulators),
the ETag it reports is compared and a mismatched object taken back.  An
upload replaces exactly the object it looked at (If-Match on its ETag) or
writes only where there is none (If-None-Match: *), so of two writers one
wins and the other looks again.  A blob over 5 GiB goes in parts.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import re

import botocore.exceptions

from .errors import IntegrityError, StorageUnavailable
from .uploads import Window

logger = logging.getLogger(__name__)

# A plain ETag: the MD5 of what a single PUT stored.
PLAIN_MD5 = re.compile(r'"?([0-9a-f]{32})"?')


def store(driver, key, src, start, size, md5, content_type):
    """Store `size` bytes of `src` from `start` under `key` in the bucket
    of `driver` (S3Storage), unless they are there already."""
    if size > driver.multipart_above and driver.expected_sha256(key):
        return _put_parts(driver, key, src, start, size, content_type)
    for _ in range(5):
        current = driver._head(key)
        if current is not None and current["ContentLength"] == size and \
                PLAIN_MD5.fullmatch(current["ETag"]) and current["ETag"].strip('"') == md5:
            return  # stored already
        # replace exactly what was looked at (a fragment, an older
        # record), or write only where there is nothing
        condition = {"IfMatch": current["ETag"]} if current else {"IfNoneMatch": "*"}
        if _put_once(driver, key, src, start, size, md5, content_type, condition):
            return
        logger.info("%s was written concurrently; checking what is there", key)
    raise StorageUnavailable(f"{driver.name}: storing {key}: kept losing races with "
                             "other writers")


def _put_once(driver, key, src, start, size, md5, content_type, condition) -> bool:
    """One conditional PUT; False when its condition did not hold."""
    try:
        answer = driver._s3.put_object(
            Bucket=driver.bucket, Key=key, Body=Window(src, start, size), ContentLength=size,
            ContentMD5=base64.b64encode(bytes.fromhex(md5)).decode(),
            ContentType=content_type, **condition)
    except botocore.exceptions.ClientError as e:
        if driver.code_of(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
            return False
        if driver.code_of(e) in ("BadDigest", "InvalidDigest"):
            raise IntegrityError(f"{key}: {driver.name} refused the upload: {driver.code_of(e)}") from e
        raise driver._failed(f"storing {key}", e) from e
    except botocore.exceptions.BotoCoreError as e:
        raise driver._failed(f"storing {key}", e) from e
    _check_stored(driver, key, answer, md5)
    return True


def _check_stored(driver, key, answer, md5):
    # A plain ETag is the MD5 of what was stored (not under SSE-KMS,
    # where S3 has checked the Content-MD5 itself); a mismatch means a
    # service that does not check, and a body that changed on the way.
    etag = answer.get("ETag", "")
    kms = str(answer.get("ServerSideEncryption", "")).startswith("aws:kms")
    if kms or not PLAIN_MD5.fullmatch(etag) or etag.strip('"') == md5:
        return
    logger.error("%s: stored MD5 %s, expected %s; deleting it", key, etag, md5)
    try:
        driver._s3.delete_object(Bucket=driver.bucket, Key=key, IfMatch=etag)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
        logger.error("%s: could not delete the mismatched object: %s", key, e)
    raise IntegrityError(f"{key}: {driver.name} stored MD5 {etag.strip(chr(34))} instead of {md5}")


def _put_parts(driver, key, src, start, size, content_type):
    """A blob over 5 GiB, in parts, each with its Content-MD5; the
    content is its digest, so a concurrent writer writes the same."""
    what = f"storing {key}"
    upload = driver._call(what, driver._s3.create_multipart_upload, Bucket=driver.bucket, Key=key,
                        ContentType=content_type)["UploadId"]
    parts = []
    try:
        for number, offset in enumerate(range(0, size, driver.part_size), 1):
            length = min(driver.part_size, size - offset)
            src.seek(start + offset)
            part = src.read(length)
            digest = base64.b64encode(hashlib.md5(part).digest()).decode()
            answer = driver._call(what, driver._s3.upload_part, Bucket=driver.bucket, Key=key,
                                UploadId=upload, PartNumber=number, Body=part,
                                ContentMD5=digest)
            parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        driver._call(what, driver._s3.complete_multipart_upload, Bucket=driver.bucket, Key=key,
                   UploadId=upload, MultipartUpload={"Parts": parts})
    except BaseException:
        try:
            driver._s3.abort_multipart_upload(Bucket=driver.bucket, Key=key, UploadId=upload)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
            pass  # the bucket's lifecycle rule for incomplete uploads takes it
        raise
