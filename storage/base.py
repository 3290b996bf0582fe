"""The storage interface every backend implements."""
from __future__ import annotations

import abc
import hashlib
import io
import tempfile
import typing
from dataclasses import dataclass

from . import keys
from .errors import IntegrityError, ObjectNotFound
from .spool import Spool


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object, as a listing sees it."""

    key: str
    size: int
    used: float     # when it was last written or marked used (seconds since the epoch)
    version: str    # what a conditional delete compares with


class Storage(abc.ABC):
    """A flat key -> bytes store.

    Writes are atomic: an object is visible under its key only once it is
    complete, and an object under a content-addressed key (`layers/sha256:..`)
    is verified against that digest before it gets the key.
    """

    #: name shown to people, e.g. in "storage unavailable" errors
    name = "storage"
    #: whether put_spooled() needs the MD5 of the bytes (a bucket checks
    #: uploads with it); a writer computes it only then
    wants_md5 = True

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

    def size(self, key: str) -> int:
        """The object's size in bytes, checked as open() checks it (for
        when its bytes are not read here: a HEAD, or a web server in front
        sending the file)."""
        with self.open(key) as f:
            return f.seek(0, io.SEEK_END)

    @abc.abstractmethod
    def put(self, key: str, fileobj: typing.BinaryIO, *, size: int, md5: str,
            content_type: str = "application/octet-stream") -> None:
        """Store `size` bytes read from `fileobj` (from its current position).

        `md5` is the hex MD5 of those bytes; the write fails with
        IntegrityError, leaving nothing under `key`, if the data does not
        match it (or, for a blob key, its sha256).
        """

    def spool(self) -> Spool:
        """A temporary file to write an object into as it is made, for
        put_spooled(): large objects (layers) are written once, not written
        and then copied."""
        return Spool(tempfile.TemporaryFile())

    def put_spooled(self, key: str, spool: Spool, *, size: int, sha256: str,
                    md5: str | None = None,
                    content_type: str = "application/octet-stream") -> None:
        """Store the `size` bytes written into `spool` under `key`, with
        the sha256 (hex) and, when `wants_md5`, the MD5 the writer computed
        as it wrote them: IntegrityError, leaving nothing under `key`, if
        they do not match the key's digest or the bytes.  A driver that
        keeps the spooled file as it is (the filesystem) need not read it
        again; the others check and upload it as put() does."""
        self._vouched(key, spool, size, sha256, md5)
        spool.file.seek(0)
        self.put(key, spool.file, size=size, md5=md5, content_type=content_type)
        spool.stored = True

    def _vouched(self, key, spool, size, sha256, md5):
        """What put_spooled() checks without reading the spooled bytes: the
        writer's hashes are there and fit the key, and the size is right."""
        if md5 is None and self.wants_md5:
            raise ValueError(f"{self.name} needs the MD5 of what it stores")
        want = self.expected_sha256(key)
        if want and want != sha256:
            raise IntegrityError(f"{key}: content has sha256 {sha256}")
        spool.file.flush()
        written = spool.file.seek(0, io.SEEK_END)
        if written != size:
            raise IntegrityError(f"{key}: got {written} of {size} bytes")

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

    # What garbage collection needs: listing, marking an object as used
    # (so that a collection running now sees it as live), and deleting an
    # object only if it is still as the collection judged it.

    @abc.abstractmethod
    def list(self, prefix: str) -> typing.Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix` (a folder, `layers/`)."""

    @abc.abstractmethod
    def mark_used(self, key: str) -> bool:
        """Record that the object is in use now (it changes its version);
        False when there is no such object."""

    @abc.abstractmethod
    def delete_if(self, key: str, version: str) -> bool:
        """Delete the object only if it is still at `version` (not written
        or marked used since it was listed); whether it was deleted."""

    def unchanged(self, key: str):
        """A function that tells, cheaply (one local stat), whether the
        object under `key` is still the one whose digest was checked, or
        None when this storage cannot tell so (the worker gives a blob again
        without the app only while it can, app/http/replay.py)."""
        return None

    def url(self, key: str) -> str | None:
        """A URL clients may fetch the object from directly, or None to stream it."""
        return None

    def check(self) -> None:
        """Raise StorageUnavailable when the storage does not answer now
        (for readiness probes: quickly, without the retries of a pull)."""
        self.exists("readyz/probe")  # any answer, even "no", means it is reachable

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
