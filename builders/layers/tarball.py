"""Deterministic layer tarballs, streamed once through every hash they need.

tar bytes -> sha256 (the diff_id) -> gzip -> sha256 (the digest) and, for
storage that checks it, MD5 -> output file.  Memory holds a few blocks of
the tar stream, whatever the size of the layer: file contents are read
straight into a block, each full block is hashed and compressed on a pool
of threads while the next ones fill, and the compressed blocks are hashed
and written in order.

The tar stream is what `tarfile` writes in PAX format for the same entries
(headers as `tarfile.TarInfo` makes them, made faster by tarheader.py); it
is assembled here so that nothing is kept per member and file data is not
copied through extra buffers.
What becomes of its blocks (hashes, compression, output) is blocks.py's.
"""
from __future__ import annotations

import logging
import os
import stat
import tarfile

from .blocks import BLOCK, LayerBlob, Sink
from .compress import Compression
from .tarheader import header

logger = logging.getLogger(__name__)

# Nix's own timestamp for store paths; fixed so tarballs are reproducible.
MTIME = 1
_TAR_BLOCK = tarfile.BLOCKSIZE
_TAR_RECORD = tarfile.RECORDSIZE
_ZEROS = bytes(_TAR_RECORD)


class _Writer:
    """A tar stream in PAX format, entries added in the order given."""

    def __init__(self, out, compression, pool=None, md5=True):
        self.sink = Sink(out, compression, pool, md5)

    def add(self, name, type, mode, linkname=""):
        self.sink.write(header(name, type, mode, MTIME, linkname=linkname))

    def add_file(self, name, mode, size, path):
        self.sink.write(header(name, tarfile.REGTYPE, mode, MTIME, size))
        # a bare descriptor: a file object costs an fstat and more Python
        # per file, and a layer of small files is mostly per-file costs
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.sink.copy_from(fd, size, path)
        finally:
            os.close(fd)
        pad = -size % _TAR_BLOCK
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
            writer.add(name, tarfile.DIRTYPE, mode)
        elif stat.S_ISLNK(st.st_mode):
            writer.add(name, tarfile.SYMTYPE, 0o777, os.readlink(path))
        elif stat.S_ISREG(st.st_mode):
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                # Hard links only within this layer: another layer's copy
                # of the same inode is a file of its own there.
                if key in links:
                    writer.add(name, tarfile.LNKTYPE, mode, links[key])
                    continue
                links[key] = name
            writer.add_file(name, mode, st.st_size, path)
        # sockets, fifos and devices never occur in the Nix store


def _chain(first, rest):
    yield first
    yield from rest


def write_store_layer(paths, out, compression: Compression = Compression(), *, pool=None,
                      md5=True) -> LayerBlob:
    """Write the gzipped tarball of `paths` (store paths) to `out`; its
    blocks are compressed on `pool` (an executor shared by the layers made
    at once; without one, threads of its own), its MD5 computed if `md5`."""
    writer = _Writer(out, compression, pool, md5)
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
                    writer.add(d, tarfile.DIRTYPE, 0o755)
            _add_path(writer, path, links)
    except BaseException:
        writer.abort()
        raise
    return writer.finish()


def write_tree_layer(tree, out, compression: Compression = Compression(), *, pool=None,
                     md5=True) -> LayerBlob:
    """Write a layer from a description: {relative path: entry}, where an
    entry is ("dir", mode) or ("symlink", target).  Parents must be listed."""
    writer = _Writer(out, compression, pool, md5)
    try:
        for name in sorted(tree):
            kind, arg = tree[name]
            if kind == "dir":
                writer.add(name, tarfile.DIRTYPE, arg)
            elif kind == "symlink":
                writer.add(name, tarfile.SYMTYPE, 0o777, arg)
            else:
                raise ValueError(f"unknown entry kind {kind!r}")
    except BaseException:
        writer.abort()
        raise
    return writer.finish()
