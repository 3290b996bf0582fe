"""Deterministic layer tarballs, streamed once through every hash they need.

tar bytes -> sha256 (the diff_id) -> gzip -> sha256 (the digest) and MD5 ->
output file.  Nothing is held in memory beyond one copy buffer.
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import zlib
from dataclasses import dataclass

# Nix's own timestamp for store paths; fixed so tarballs are reproducible.
MTIME = 1
GZIP_LEVEL = 6
COPY_BUFFER = 1 << 20


@dataclass(frozen=True)
class LayerBlob:
    digest: str    # sha256 of the gzipped bytes
    diff_id: str   # sha256 of the tar bytes
    size: int      # gzipped bytes
    md5: str       # hex MD5 of the gzipped bytes, for storage checks


class _HashingGzip(io.RawIOBase):
    """A write-only stream that hashes, gzips and hashes again."""

    def __init__(self, out, level):
        self.out = out
        self.diff = hashlib.sha256()
        self.digest = hashlib.sha256()
        self.md5 = hashlib.md5()
        self.size = 0
        self.position = 0
        # wbits 31: a gzip wrapper with mtime 0 and no file name, so the
        # output depends only on the input
        self.z = zlib.compressobj(level, zlib.DEFLATED, 31)

    def writable(self):
        return True

    def tell(self):
        return self.position  # tarfile asks where the archive starts

    def write(self, data):
        self.position += len(data)
        self.diff.update(data)
        self._emit(self.z.compress(data))
        return len(data)

    def _emit(self, chunk):
        if chunk:
            self.digest.update(chunk)
            self.md5.update(chunk)
            self.size += len(chunk)
            self.out.write(chunk)

    def finish(self) -> LayerBlob:
        self._emit(self.z.flush())
        return LayerBlob("sha256:" + self.digest.hexdigest(),
                         "sha256:" + self.diff.hexdigest(), self.size, self.md5.hexdigest())


def _info(name, **fields):
    ti = tarfile.TarInfo(name)
    ti.mtime = MTIME
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    for k, v in fields.items():
        setattr(ti, k, v)
    return ti


def _dir(name, mode=0o755):
    return _info(name, type=tarfile.DIRTYPE, mode=mode)


class _Writer:
    def __init__(self, out, level):
        self.stream = _HashingGzip(out, level)
        self.tar = tarfile.open(fileobj=self.stream, mode="w", format=tarfile.PAX_FORMAT,
                                encoding="utf-8", errors="surrogateescape")
        self.tar.copybufsize = COPY_BUFFER

    def add(self, info, fileobj=None):
        self.tar.addfile(info, fileobj)

    def finish(self) -> LayerBlob:
        self.tar.close()
        return self.stream.finish()


def _walk(path):
    """Entries below `path` in sorted order, depth first: (abs path, lstat)."""
    with os.scandir(path) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        st = entry.stat(follow_symlinks=False)
        yield entry.path, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(entry.path)


def _add_path(writer, root, links):
    """Add one file-system tree (a store path) under its own absolute name."""
    st = os.lstat(root)
    for path, st in [(root, st)] + (list(_walk(root)) if stat.S_ISDIR(st.st_mode) else []):
        name = path.lstrip("/")
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            writer.add(_dir(name, mode))
        elif stat.S_ISLNK(st.st_mode):
            writer.add(_info(name, type=tarfile.SYMTYPE, linkname=os.readlink(path), mode=0o777))
        elif stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            # Hard links only within this layer: another layer's copy of
            # the same inode is a file of its own there.
            if st.st_nlink > 1 and key in links:
                writer.add(_info(name, type=tarfile.LNKTYPE, linkname=links[key], mode=mode))
                continue
            links[key] = name
            with open(path, "rb") as f:
                writer.add(_info(name, type=tarfile.REGTYPE, size=st.st_size, mode=mode), f)
        # sockets, fifos and devices never occur in the Nix store


def write_store_layer(paths, out, level=GZIP_LEVEL) -> LayerBlob:
    """Write the gzipped tarball of `paths` (store paths) to `out`."""
    writer = _Writer(out, level)
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
    return writer.finish()


def write_tree_layer(tree, out, level=GZIP_LEVEL) -> LayerBlob:
    """Write a layer from a description: {relative path: entry}, where an
    entry is ("dir", mode) or ("symlink", target).  Parents must be listed."""
    writer = _Writer(out, level)
    for name in sorted(tree):
        kind, arg = tree[name]
        if kind == "dir":
            writer.add(_dir(name, arg))
        elif kind == "symlink":
            writer.add(_info(name, type=tarfile.SYMTYPE, linkname=arg, mode=0o777))
        else:
            raise ValueError(f"unknown entry kind {kind!r}")
    return writer.finish()
