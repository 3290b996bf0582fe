"""Deterministic gzip streams from one of several deflate implementations.

Clients expect `tar+gzip` layers, but which deflate makes the gzip is ours
to choose: bench/compressors.py measures them on store-like data, and the
default is the fastest level whose output stays within 15% of zlib -6.

Every compressor is fed fixed-size blocks by its caller and writes a gzip
header with no file name and mtime 0, so the bytes depend only on the input,
the compressor and its level.  Each compressor releases the GIL while it
deflates, so layers made on several threads use several cores.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

# Deflate looks back at most 32 KiB: the dictionary a block needs from the
# one before it.
WINDOW = 32 * 1024

# ID1 ID2, CM=deflate, no flags, MTIME 0, XFL 0, OS 3 (Unix): what zlib
# writes with wbits 31, so every compressor starts alike.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"


@dataclass(frozen=True)
class Kind:
    name: str
    levels: range
    default: int


# The defaults per compressor and the overall default come from the figures
# of bench/compressors.py (docs/benchmarks.md, "Which compressor"): isal level 1 is the fastest choice
# whose layers stay within 15% of zlib -6.
KINDS = {
    "isal": Kind("isal", range(0, 4), 1),
    "zlib-ng": Kind("zlib-ng", range(0, 10), 1),
    "zlib": Kind("zlib", range(0, 10), 6),
}
DEFAULT = "isal"


class _ZlibGzip:
    """zlib or zlib-ng: their compress() releases the GIL on large inputs."""

    def __init__(self, module, level):
        self._z = module.compressobj(level, module.DEFLATED, 31)

    def compress(self, block) -> bytes:
        return self._z.compress(block)

    def finish(self) -> bytes:
        return self._z.flush()


class _IsalGzip:
    """ISA-L's deflate, a block at a time.

    isal's compressobj holds the GIL while it works; the block compressor
    behind its threaded gzip writer does not.  It ends every block with a
    sync flush and takes the previous block's last 32 KiB as dictionary, so
    the stream is one valid deflate stream.  The gzip wrapper (header, empty
    final block, CRC and size) is written here.
    """

    def __init__(self, level, block_size):
        isal_zlib = _isal()
        self._isal = isal_zlib
        # Deflate codes at most 15 bits per input byte (level 0 never falls
        # back to stored blocks); more than enough room for any block.
        self._c = isal_zlib._ParallelCompress(buffersize=2 * block_size + 1024, level=level)
        self._crc = 0
        self._size = 0
        self._tail = b""
        self._started = False

    def compress(self, block) -> bytes:
        out, crc = self._c.compress_and_crc(block, self._tail)
        n = len(block)
        self._crc = self._isal.crc32_combine(self._crc, crc, n) if self._size else crc
        self._size += n
        self._tail = bytes(block[-WINDOW:])
        if not self._started:
            self._started = True
            return GZIP_HEADER + out
        return out

    def finish(self) -> bytes:
        head = b"" if self._started else GZIP_HEADER
        # an empty final block closes the deflate stream
        end = self._isal.compress(b"", wbits=-15)
        return head + end + struct.pack("<II", self._crc, self._size & 0xFFFFFFFF)


def _isal():
    from isal import isal_zlib
    if not hasattr(isal_zlib, "_ParallelCompress"):
        raise ValueError("this isal lacks the block compressor layers need; install isal>=1.9")
    return isal_zlib


@dataclass(frozen=True)
class Compression:
    """A compressor and its level: what layers are gzipped with."""

    kind: str = DEFAULT
    level: int | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown compressor {self.kind!r}; use one of {', '.join(KINDS)}")
        if self.level is None:
            object.__setattr__(self, "level", KINDS[self.kind].default)
        levels = KINDS[self.kind].levels
        if self.level not in levels:
            raise ValueError(f"{self.kind} levels are {levels.start} to {levels.stop - 1}, "
                             f"not {self.level}")
        if self.kind == "isal":
            _isal()  # fail at start, not at the first build

    def __str__(self):
        return f"{self.kind} -{self.level}"

    def gzip(self, block_size):
        """A new gzip stream; feed it blocks of `block_size` (the last may be shorter)."""
        if self.kind == "isal":
            return _IsalGzip(self.level, block_size)
        if self.kind == "zlib-ng":
            from zlib_ng import zlib_ng
            return _ZlibGzip(zlib_ng, self.level)
        return _ZlibGzip(zlib, self.level)
