"""Tar headers, byte for byte as `tarfile` writes them in PAX format, made fast.

A layer of many small files spends most of its time making headers, and
that time holds the GIL, so it is the part of making layers no other core
can help with.  `tarfile.TarInfo.tobuf` builds each header from a dict
through a dozen calls; the entries of a layer have fixed owners and times
and four types, so their headers are made here from a few precomputed
pieces.  What is not plain ASCII, or too large for the ustar fields, is
left to `tarfile`, and tests compare both over names, links and sizes at
every field's bounds.
"""
from __future__ import annotations

import tarfile

_NUL = b"\0"
_BLOCK = tarfile.BLOCKSIZE
_SIZE_LIMIT = 8 ** 11    # what the 12-byte size field holds
# uid, gid: 0; after size: mtime
_IDS = b"0000000\0" * 2
_CHECKSUM = b" " * 8
# magic, uname and gname empty, no device numbers, no prefix, padding
_REST = tarfile.POSIX_MAGIC + _NUL * (32 + 32 + 8 + 8 + 155 + 12)
_REST_SUM = sum(_REST) + sum(_IDS) + sum(_CHECKSUM)


def header(name: str, type: bytes, mode: int, mtime: int, size: int = 0,
           linkname: str = "") -> bytes:
    """The header blocks of one entry owned by 0:0 with no user or group
    names (with a pax header first when the name or link is long), as
    `tarfile.TarInfo.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")`
    makes them."""
    if type == tarfile.DIRTYPE and not name.endswith("/"):
        name += "/"
    if not (name.isascii() and linkname.isascii() and 0 <= size < _SIZE_LIMIT):
        return _by_tarfile(name, type, mode, mtime, size, linkname)
    records = b""
    if len(name) > 100:
        records += _record(b"path", name.encode("ascii"))
    if len(linkname) > 100:
        records += _record(b"linkpath", linkname.encode("ascii"))
    entry = _ustar(name.encode("ascii"), type, mode, size, mtime, linkname.encode("ascii"))
    if not records:
        return entry
    pad = -len(records) % _BLOCK
    return (_ustar(b"././@PaxHeader", tarfile.XHDTYPE, 0, len(records), 0, b"")
            + records + _NUL * pad + entry)


def _ustar(name: bytes, type: bytes, mode: int, size: int, mtime: int, link: bytes) -> bytes:
    name = name[:100]
    link = link[:100]
    head = b"%s%s%07o\0" % (name, _NUL * (100 - len(name)), mode & 0o7777)
    numbers = b"%011o\0%011o\0" % (size, mtime)
    linkfield = link + _NUL * (100 - len(link))
    checksum = sum(head) + sum(numbers) + type[0] + sum(linkfield) + _REST_SUM
    return b"".join((head, _IDS, numbers, b"%06o\0 " % checksum, type, linkfield, _REST))


def _record(keyword: bytes, value: bytes) -> bytes:
    """One pax record, "LENGTH keyword=value\\n", LENGTH counting itself."""
    n = len(keyword) + len(value) + 3
    p = 0
    while True:
        total = n + len(str(p))
        if total == p:
            break
        p = total
    return b"%d %s=%s\n" % (p, keyword, value)


def _by_tarfile(name, type, mode, mtime, size, linkname) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.type = type
    ti.mode = mode
    ti.size = size
    ti.linkname = linkname
    ti.mtime = mtime
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
