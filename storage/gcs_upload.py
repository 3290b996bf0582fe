"""Uploads of blobs to Google Cloud Storage.

The MD5 of the bytes travels with the upload, and Cloud Storage refuses to
create an object whose bytes do not match it.  An upload replaces exactly
the generation of the key it looked at (`if_generation_match`), so of two
writers one wins and the other looks again: the same content is success,
anything else is replaced.  A failed upload is started over whole, from the
first byte of its source, until the operation's time is up.
"""
from __future__ import annotations

import base64
import logging
import time

from google.api_core import exceptions as api

from .errors import IntegrityError
from .gcs_retry import FAILURES, ONCE, TIMEOUT, detail, short

logger = logging.getLogger(__name__)

# Resumable uploads hold one chunk in memory at a time; the library's
# default (100 MiB) would hold most layers whole.  Uploads of at most
# 8 MiB go in one request, so no upload holds more than this.
CHUNK_SIZE = 8 << 20


def store(driver, key, src, start, size, md5, content_type):
    """Store `size` bytes of `src` from `start` under `key` in the bucket of
    `driver` (GCSStorage), unless they are there already."""
    md5_b64 = base64.b64encode(bytes.fromhex(md5)).decode()
    retries = driver._retries(f"storing {key}")
    while True:
        current = driver._metadata(key, retries)
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
            retries.whole(_upload, driver, key, src, start, size, md5_b64, content_type,
                          generation)
            return
        except api.PreconditionFailed as e:
            # Someone else wrote the key since we looked: look again; the
            # same content is success, anything else is replaced.
            logger.info("%s was written concurrently; checking what is there", key)
            if time.monotonic() > retries.deadline:
                raise driver.unavailable(f"storing {key}: kept losing races with other "
                                         "writers") from e
        except api.BadRequest as e:
            # What Cloud Storage answers when the bytes it got do not
            # match the MD5 sent with them.
            logger.error("%s: upload of %s refused: %s", driver.name, key, detail(e))
            raise IntegrityError(f"{key}: {driver.name} refused the upload: {short(e)}") from e
        except FAILURES as e:
            raise driver._failed(f"storing {key}", e, retries) from e


def _upload(driver, key, src, start, size, md5_b64, content_type, generation):
    blob = driver._bucket.blob(key, chunk_size=CHUNK_SIZE)
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
                        retry=driver._retries(f"deleting {key}").conditional())
        except api.GoogleAPIError as e:
            logger.error("%s: could not delete the mismatched object: %s", key, detail(e))
        raise IntegrityError(f"{key}: {driver.name} stored MD5 {blob.md5_hash}, size "
                             f"{blob.size} instead of {md5_b64}, {size}")
