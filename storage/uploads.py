"""What the bucket drivers (GCS, S3) share about an upload: the bytes are
checked before any of them leaves, read from a seekable file (a retry reads
them again), and keys are plain relative paths."""
from __future__ import annotations

import hashlib
import io
import shutil
import tempfile

from .errors import IntegrityError
from .ranged import RangedReader

# Copy buffer for hashing and spooling the data to upload.
COPY_SIZE = 1 << 20


def check_key(key):
    # Object names may hold anything, but the keys this registry writes are
    # plain relative paths; refuse the rest as the filesystem driver does.
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid storage key: {key!r}")


def verify(key, src, start, size, md5, want_sha):
    """Check the bytes to upload before any of them leaves: their size, their
    MD5 and, under a content-addressed key, their sha256 (`want_sha`)."""
    md5sum, sha = hashlib.md5(), hashlib.sha256()
    src.seek(start)
    remaining = size
    while remaining > 0:
        chunk = src.read(min(COPY_SIZE, remaining))
        if not chunk:
            raise IntegrityError(f"{key}: got {size - remaining} of {size} bytes")
        remaining -= len(chunk)
        md5sum.update(chunk)
        if want_sha:
            sha.update(chunk)
    if md5sum.hexdigest() != md5:
        raise IntegrityError(f"{key}: MD5 {md5sum.hexdigest()} does not match {md5}")
    if want_sha and sha.hexdigest() != want_sha:
        raise IntegrityError(f"{key}: content has sha256 {sha.hexdigest()}")


class seekable_copy:
    """The data to upload as a seekable file and its start offset: the
    caller's own file when it can seek (uploads re-read it on retry), else a
    copy spooled to a temporary file, never the whole of it in memory."""

    def __init__(self, fileobj, size):
        self.fileobj, self.size = fileobj, size
        self.tmp = None

    def __enter__(self):
        try:
            if self.fileobj.seekable():
                return self.fileobj, self.fileobj.tell()
        except (AttributeError, OSError):
            pass
        self.tmp = tempfile.TemporaryFile()
        shutil.copyfileobj(Limited(self.fileobj, self.size), self.tmp, COPY_SIZE)
        return self.tmp, 0

    def __exit__(self, *exc):
        if self.tmp is not None:
            self.tmp.close()


class Limited(io.RawIOBase):
    """At most `size` bytes of a stream."""

    def __init__(self, raw, size):
        self.raw, self.left = raw, size

    def readable(self):
        return True

    def read(self, n=-1):
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.raw.read(n) if n else b""
        self.left -= len(data)
        return data


class Window(RangedReader):
    """`size` bytes of a seekable file from `start`, as a seekable file of
    its own: what an HTTP client that rewinds its body (to hash it, to
    retry) is given."""

    def __init__(self, raw, start, size):
        super().__init__(size)
        self.raw, self.start = raw, start

    def seek(self, offset, whence=io.SEEK_SET):
        # kept within the window: a client may seek to its end and back
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, min(base + offset, self._size))
        return self._pos

    def _fetch(self, first, last):
        self.raw.seek(self.start + first)
        return self.raw.read(last - first + 1)
