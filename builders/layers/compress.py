"""Deterministic gzip streams from one of several deflate implementations.

Clients expect `tar+gzip` layers, but which deflate makes the gzip is ours
to choose: bench/compressors.py measures them on store-like data, and the
default is the fastest level whose output stays within 15% of zlib -6.

Every compressor is fed fixed-size blocks by its caller and writes a gzip
header with no file name and mtime 0, so the bytes depend only on the input,
the compressor and its level.  Each compressor releases the GIL while it
deflates; ISA-L's blocks do not depend on each other's output, so even one
layer's blocks are compressed on every core (tarball.py).
"""
from __future__ import annotations

import struct
import threading
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
# Not a compressor an operator picks: what a layer that deflate cannot
# shrink is stored as (a plain tar layer).
NONE = "none"


class _ZlibGzip:
    """zlib or zlib-ng: their compress() releases the GIL on large inputs,
    but each block continues the stream the block before left, so a
    stream's blocks are compressed one after another."""

    parallel = False

    def __init__(self, module, level):
        self._z = module.compressobj(level, module.DEFLATED, 31)

    def header(self) -> bytes:
        return b""  # zlib writes it with the first block

    def block(self, data, tail) -> tuple[bytes, int]:
        return self._z.compress(data), 0

    def combine(self, crc, block_crc, n) -> int:
        return 0  # zlib keeps the CRC itself

    def trailer(self, crc, size) -> bytes:
        return self._z.flush()


class _IsalGzip:
    """ISA-L's deflate, a block at a time, any number of blocks at once.

    isal's compressobj holds the GIL while it works; the block compressor
    behind its threaded gzip writer does not.  Every block ends with a sync
    flush and takes the previous block's last 32 KiB of input (`tail`) as
    dictionary, so a block's bytes depend on its input alone and blocks can
    be compressed on several threads at once, while the stream is still one
    valid deflate stream.  The gzip wrapper (header, empty final block, the
    CRC combined from the blocks' and the size) is written here.
    """

    parallel = True
    # a block compressor holds one output buffer: one per thread
    _local = threading.local()

    def __init__(self, level, block_size):
        self._isal = _isal()
        self._level = level
        # Deflate codes at most 15 bits per input byte (level 0 never falls
        # back to stored blocks); more than enough room for any block.
        self._buffer = 2 * block_size + 1024

    def header(self) -> bytes:
        return GZIP_HEADER

    def block(self, data, tail) -> tuple[bytes, int]:
        compressors = self._local.__dict__.setdefault("compressors", {})
        c = compressors.get((self._level, self._buffer))
        if c is None:
            c = compressors[self._level, self._buffer] = self._isal._ParallelCompress(
                buffersize=self._buffer, level=self._level)
        return c.compress_and_crc(data, tail)

    def combine(self, crc, block_crc, n) -> int:
        return self._isal.crc32_combine(crc, block_crc, n)

    def trailer(self, crc, size) -> bytes:
        # an empty final block closes the deflate stream
        end = self._isal.compress(b"", wbits=-15)
        return end + struct.pack("<II", crc, size & 0xFFFFFFFF)


class _Plain:
    """No compression: the layer is its tar stream."""

    parallel = False

    def header(self) -> bytes:
        return b""

    def block(self, data, tail) -> tuple[bytes, int]:
        return data, 0

    def combine(self, crc, block_crc, n) -> int:
        return 0

    def trailer(self, crc, size) -> bytes:
        return b""


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
        if self.kind == NONE:
            object.__setattr__(self, "level", 0)
            return
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
        return self.kind if self.kind == NONE else f"{self.kind} -{self.level}"

    @property
    def compressed(self) -> bool:
        return self.kind != NONE

    def gzip(self, block_size):
        """A new stream of blocks of `block_size` (the last may be shorter):
        header(), then for each block (in order, unless the stream is
        `parallel`) block(data, the previous block's last 32 KiB) -> (bytes,
        CRC), CRCs combined in order by combine(), then trailer(CRC, size)."""
        if self.kind == NONE:
            return _Plain()
        if self.kind == "isal":
            return _IsalGzip(self.level, block_size)
        if self.kind == "zlib-ng":
            from zlib_ng import zlib_ng
            return _ZlibGzip(zlib_ng, self.level)
        return _ZlibGzip(zlib, self.level)
