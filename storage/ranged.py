"""Reading one version of a bucket's object with ranged GETs.

A reader seeks freely and fetches only the bytes asked for, and every
range comes from the version it was opened at, so a rewritten object is
never read half old and half new.  Each driver says how a range is fetched.
"""
from __future__ import annotations

import io


class RangedReader(io.RawIOBase):
    """A raw, seekable reader of `size` bytes; `_fetch(first, last)` gets
    the bytes from `first` to `last` (inclusive) of the object's version."""

    def __init__(self, size: int):
        self._size = size
        self._pos = 0

    def _fetch(self, first: int, last: int) -> bytes:
        raise NotImplementedError

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
        data = self._fetch(self._pos, min(self._pos + len(buffer), self._size) - 1)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)
