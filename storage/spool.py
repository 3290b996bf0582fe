"""A file an object is written into as it is made, before it is stored."""
from __future__ import annotations

import os
import typing

from .errors import StorageUnavailable


class Spool:
    """A file the bytes of an object are written into before they are
    stored (Storage.put_spooled); closed, and removed unless stored, when
    the `with` block ends."""

    def __init__(self, file: typing.BinaryIO, path: str | None = None):
        self.file = file
        self.path = path        # where it is, for drivers that move it into place
        self.stored = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()
        if self.path is not None and not self.stored:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class StorageFile:
    """A spooled file in the storage's own folder: that it cannot be written
    (a full disk) is the storage's trouble, StorageUnavailable, as it is for
    any other write there, not the build machine's."""

    def __init__(self, file: typing.BinaryIO, what: str):
        self._file = file
        self._what = what

    def write(self, data):
        try:
            return self._file.write(data)
        except OSError as e:
            raise StorageUnavailable(f"{self._what}: {e.strerror}") from e

    def flush(self):
        try:
            self._file.flush()
        except OSError as e:
            raise StorageUnavailable(f"{self._what}: {e.strerror}") from e

    def __getattr__(self, name):
        return getattr(self._file, name)
