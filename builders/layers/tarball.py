"""Deterministic layer tarballs, streamed once through every hash they need.

tar bytes -> sha256 (the diff_id) -> gzip -> sha256 (the digest) and MD5 ->
output file.  Memory holds a few blocks of the tar stream, whatever the size
of the layer: file contents are read straight into a block, and each full
block is hashed, then compressed, hashed and written on a second thread
while the next one fills.

The tar stream is what `tarfile` writes in PAX format for the same entries
(headers come from `tarfile.TarInfo`); it is assembled here so that nothing
is kept per member and file data is not copied through extra buffers.
"""
from __future__ import annotations

import hashlib
import logging
import os
import queue
import stat
import tarfile
import threading
from dataclasses import dataclass

from .compress import Compression

logger = logging.getLogger(__name__)

# Nix's own timestamp for store paths; fixed so tarballs are reproducible.
MTIME = 1
# The tar stream is compressed in blocks of this size.  The blocks' bounds
# are part of what fixes the gzip bytes, so changing it changes digests.
BLOCK = 1 << 20

_TAR_BLOCK = tarfile.BLOCKSIZE
_TAR_RECORD = tarfile.RECORDSIZE
_ZEROS = bytes(_TAR_RECORD)


@dataclass(frozen=True)
class LayerBlob:
    digest: str    # sha256 of the gzipped bytes
    diff_id: str   # sha256 of the tar bytes
    size: int      # gzipped bytes
    md5: str       # hex MD5 of the gzipped bytes, for storage checks


class _Sink:
    """Fills blocks of tar bytes and hands each full one to a thread of its
    own that gzips it, hashes the result and writes it to `out`.

    Reading files and hashing the tar stream (the diff_id) overlap with
    deflating the block before, so even a one-layer image uses two cores;
    both sides release the GIL for their heavy work.  BUFFERS blocks are
    all the memory it holds, whatever the layer's size.
    """

    BUFFERS = 3

    def __init__(self, out, compression: Compression):
        self.out = out
        self.gzip = compression.gzip(BLOCK)
        self.diff = hashlib.sha256()
        self.digest = hashlib.sha256()
        self.md5 = hashlib.md5()
        self.size = 0
        self.offset = 0  # tar bytes so far
        self._free: queue.Queue = queue.Queue()
        for _ in range(self.BUFFERS):
            self._free.put(bytearray(BLOCK))
        self._full: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._take_buffer()
        self._thread = threading.Thread(target=self._deflate_blocks, name="layer-gzip",
                                        daemon=True)
        self._thread.start()

    def _take_buffer(self):
        self.buf = self._free.get()
        self.view = memoryview(self.buf)
        self.fill = 0

    def write(self, data):
        data = memoryview(data)
        while data:
            n = min(len(data), BLOCK - self.fill)
            self.view[self.fill:self.fill + n] = data[:n]
            self._advance(n)
            data = data[n:]

    def copy_from(self, f, size, name):
        """Read exactly `size` bytes of the open file `f` into the stream."""
        remaining = size
        while remaining:
            n = min(remaining, BLOCK - self.fill)
            got = f.readinto(self.view[self.fill:self.fill + n])
            if not got:
                raise OSError(f"{name} shrank while it was being read")
            self._advance(got)
            remaining -= got

    def _advance(self, n):
        self.fill += n
        self.offset += n
        if self.fill == BLOCK:
            self._block()

    def _block(self):
        if self._error is not None:
            raise self._error
        self.diff.update(self.view[:self.fill])
        self._full.put((self.buf, self.fill))
        self._take_buffer()

    def _deflate_blocks(self):
        while True:
            item = self._full.get()
            if item is None:
                return
            buf, n = item
            try:
                if self._error is None:
                    self._emit(self.gzip.compress(memoryview(buf)[:n]))
            except BaseException as e:  # handed to the writing thread
                self._error = e
            finally:
                # after an error too, so the writing thread never waits
                self._free.put(buf)

    def _emit(self, chunk):
        if chunk:
            self.digest.update(chunk)
            self.md5.update(chunk)
            self.size += len(chunk)
            self.out.write(chunk)

    def _stop(self):
        self._full.put(None)
        self._thread.join()

    def abort(self):
        self._stop()

    def finish(self) -> LayerBlob:
        if self.fill:
            self._block()
        self._stop()
        if self._error is not None:
            raise self._error
        self._emit(self.gzip.finish())
        return LayerBlob("sha256:" + self.digest.hexdigest(),
                         "sha256:" + self.diff.hexdigest(), self.size, self.md5.hexdigest())


class _Writer:
    """A tar stream in PAX format, entries added in the order given."""

    def __init__(self, out, compression):
        self.sink = _Sink(out, compression)

    def add(self, info):
        self.sink.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def add_file(self, info, path):
        self.add(info)
        with open(path, "rb", buffering=0) as f:
            self.sink.copy_from(f, info.size, path)
        pad = -info.size % _TAR_BLOCK
        if pad:
            self.sink.write(_ZEROS[:pad])

    def abort(self):
        self.sink.abort()

    def finish(self) -> LayerBlob:
        # two zero blocks end the archive; tar pads it to whole records
        self.sink.write(_ZEROS[:2 * _TAR_BLOCK])
        pad = -self.sink.offset % _TAR_RECORD
        if pad:
            self.sink.write(_ZEROS[:pad])
        return self.sink.finish()


def _info(name, type, mode, size=0, linkname=""):
    ti = tarfile.TarInfo(name)
    ti.type = type
    ti.mode = mode
    ti.size = size
    ti.linkname = linkname
    ti.mtime = MTIME
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def _dir(name, mode=0o755):
    return _info(name, tarfile.DIRTYPE, mode)


def _walk(path):
    """Entries below `path` in name order, depth first: (abs path, lstat).

    A generator, so a store path with millions of files costs memory for
    one directory listing per level, not for the whole tree.
    """
    with os.scandir(path) as it:
        entries = sorted(((e.name, e.path) for e in it))
    for _, entry_path in entries:
        st = os.lstat(entry_path)
        yield entry_path, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(entry_path)


def _add_path(writer, root, links):
    """Add one file-system tree (a store path) under its own absolute name."""
    st = os.lstat(root)
    entries = _walk(root) if stat.S_ISDIR(st.st_mode) else ()
    for path, st in _chain((root, st), entries):
        name = path.lstrip("/")
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            writer.add(_dir(name, mode))
        elif stat.S_ISLNK(st.st_mode):
            writer.add(_info(name, tarfile.SYMTYPE, 0o777, linkname=os.readlink(path)))
        elif stat.S_ISREG(st.st_mode):
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                # Hard links only within this layer: another layer's copy
                # of the same inode is a file of its own there.
                if key in links:
                    writer.add(_info(name, tarfile.LNKTYPE, mode, linkname=links[key]))
                    continue
                links[key] = name
            writer.add_file(_info(name, tarfile.REGTYPE, mode, size=st.st_size), path)
        # sockets, fifos and devices never occur in the Nix store


def _chain(first, rest):
    yield first
    yield from rest


def write_store_layer(paths, out, compression: Compression = Compression()) -> LayerBlob:
    """Write the gzipped tarball of `paths` (store paths) to `out`."""
    writer = _Writer(out, compression)
    try:
        dirs = set()
        links = {}
        for path in sorted(paths):
            parent = os.path.dirname(path).lstrip("/")
            parts = parent.split("/")
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    writer.add(_dir(d))
            _add_path(writer, path, links)
    except BaseException:
        writer.abort()
        raise
    return writer.finish()


def write_tree_layer(tree, out, compression: Compression = Compression()) -> LayerBlob:
    """Write a layer from a description: {relative path: entry}, where an
    entry is ("dir", mode) or ("symlink", target).  Parents must be listed."""
    writer = _Writer(out, compression)
    try:
        for name in sorted(tree):
            kind, arg = tree[name]
            if kind == "dir":
                writer.add(_dir(name, arg))
            elif kind == "symlink":
                writer.add(_info(name, tarfile.SYMTYPE, 0o777, linkname=arg))
            else:
                raise ValueError(f"unknown entry kind {kind!r}")
    except BaseException:
        writer.abort()
        raise
    return writer.finish()
