"""The storage interface every backend implements."""
from __future__ import annotations

import abc
import hashlib
import io
import typing

from . import keys
from .errors import ObjectNotFound


class Storage(abc.ABC):
    """A flat key -> bytes store.

    Writes are atomic: an object is visible under its key only once it is
    complete, and an object under a content-addressed key (`layers/sha256:..`)
    is verified against that digest before it gets the key.
    """

    #: name shown to people, e.g. in "storage unavailable" errors
    name = "storage"

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""

    @abc.abstractmethod
    def open(self, key: str) -> typing.BinaryIO:
        """A readable, seekable binary stream of the object; ObjectNotFound if absent.

        A content-addressed object is checked against its digest first
        (drivers may remember objects already checked); one that fails the
        check is set aside and CorruptObject (an ObjectNotFound) raised, so
        a corrupt blob is never served.
        """

    @abc.abstractmethod
    def put(self, key: str, fileobj: typing.BinaryIO, *, size: int, md5: str,
            content_type: str = "application/octet-stream") -> None:
        """Store `size` bytes read from `fileobj` (from its current position).

        `md5` is the hex MD5 of those bytes; the write fails with
        IntegrityError, leaving nothing under `key`, if the data does not
        match it (or, for a blob key, its sha256).
        """

    # Small records that writers race for (build claims): written whole,
    # conditionally on what the writer last saw, so of two writers exactly
    # one wins.

    @abc.abstractmethod
    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and a token of this version of it, or None."""

    @abc.abstractmethod
    def put_if(self, key: str, data: bytes, *, version: str | None) -> str | None:
        """Write `data` under `key` only if the object is still at `version`
        (None: only if there is no object); the new version, or None when it
        was not written."""

    def url(self, key: str) -> str | None:
        """A URL clients may fetch the object from directly, or None to stream it."""
        return None

    def read(self, key: str) -> bytes | None:
        """The whole (small) object, or None when there is none."""
        try:
            with self.open(key) as f:
                return f.read()
        except ObjectNotFound:
            return None

    def put_bytes(self, key: str, data: bytes, content_type="application/octet-stream"):
        self.put(key, io.BytesIO(data), size=len(data),
                 md5=hashlib.md5(data).hexdigest(), content_type=content_type)

    @staticmethod
    def expected_sha256(key: str) -> str | None:
        return keys.blob_sha256(key)
