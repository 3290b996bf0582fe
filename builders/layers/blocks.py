"""From a tar stream to a layer's bytes, a block at a time, on every core.

tar bytes -> sha256 (the diff_id) -> compression -> sha256 (the digest)
and, for storage that checks it, MD5 -> output file.  The caller (tarball.py)
writes the tar stream; this is what happens to its blocks.
"""
from __future__ import annotations

import collections
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

from .compress import WINDOW, Compression

# The tar stream is compressed in blocks of this size.  The blocks' bounds
# are part of what fixes the gzip bytes, so changing it changes digests.
BLOCK = 1 << 20

# Blocks of one layer compressed or waiting at once: enough to keep every
# core busy with one big layer, few enough that memory stays a few blocks.
PENDING = min(2 * (os.cpu_count() or 1), 16)


@dataclass(frozen=True)
class LayerBlob:
    digest: str    # sha256 of the layer's bytes (gzipped, or the tar itself)
    diff_id: str   # sha256 of the tar bytes
    size: int      # the layer's bytes
    md5: str | None  # hex MD5 of the layer's bytes, when asked for (bucket storage checks)
    tar_size: int = 0  # the tar bytes
    compressed: bool = True  # gzip, or a plain tar


class Sink:
    """Fills blocks of tar bytes, hashes each full one (the diff_id) and
    hands it to `pool` to compress; the compressed blocks are hashed and
    written to `out` in order, as they come back.

    The pool's threads compress several blocks of the same layer at once
    (the default compressor's blocks do not depend on each other's output),
    so one big layer uses every core, while this thread goes on reading.
    At most PENDING blocks wait or are compressed at once: memory holds
    a few blocks per layer, whatever the layer's size.
    """

    def __init__(self, out, compression: Compression, pool=None, md5=True):
        self.out = out
        self.stream = compression.gzip(BLOCK)
        self.compressed = compression.compressed
        self.diff = hashlib.sha256()
        self.digest = hashlib.sha256()
        self.md5 = hashlib.md5() if md5 else None
        self.size = 0
        self.offset = 0  # tar bytes so far
        self.crc = 0
        self._tail = b""
        self._pending: collections.deque = collections.deque()
        self._free: list = []
        self._own = None
        if not compression.compressed:
            self._pool = None  # nothing to wait for: blocks are written as they are
        elif not self.stream.parallel:
            # a stream whose blocks continue each other: compressed in order
            # on a thread of its own, still beside this one
            self._pool = self._own = ThreadPoolExecutor(1, thread_name_prefix="layer-gzip")
        else:
            self._pool = pool or ThreadPoolExecutor(
                os.cpu_count() or 1, thread_name_prefix="layer-gzip")
            if pool is None:
                self._own = self._pool
        self._limit = PENDING if self._pool is not None else 0
        self._emit(self.stream.header())
        self._take_buffer()

    def _take_buffer(self):
        self.buf = self._free.pop() if self._free else bytearray(BLOCK)
        self.view = memoryview(self.buf)
        self.fill = 0

    def write(self, data):
        data = memoryview(data)
        while data:
            n = min(len(data), BLOCK - self.fill)
            self.view[self.fill:self.fill + n] = data[:n]
            self._advance(n)
            data = data[n:]

    def copy_from(self, fd, size, name):
        """Read exactly `size` bytes of the file open as `fd` into the stream."""
        remaining = size
        while remaining:
            n = min(remaining, BLOCK - self.fill)
            got = os.readv(fd, (self.view[self.fill:self.fill + n],))
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
        block = self.view[:self.fill]
        self.diff.update(block)
        tail, self._tail = self._tail, bytes(block[-WINDOW:])
        if self._pool is None:
            result = self.stream.block(block, tail)
        else:
            result = self._pool.submit(self.stream.block, block, tail)
        self._pending.append((result, self.buf, self.fill))
        while len(self._pending) > self._limit:
            self._write_oldest()
        self._take_buffer()

    def _write_oldest(self):
        result, buf, n = self._pending.popleft()
        data, crc = result if isinstance(result, tuple) else result.result()
        self.crc = self.stream.combine(self.crc, crc, n)
        self._emit(data)
        self._free.append(buf)

    def _emit(self, chunk):
        if chunk:
            if self.compressed:  # a plain tar's digest is its diff_id
                self.digest.update(chunk)
            if self.md5 is not None:
                self.md5.update(chunk)
            self.size += len(chunk)
            self.out.write(chunk)

    def abort(self):
        for result, _, _ in self._pending:
            if not isinstance(result, tuple):
                result.cancel()
        futures = [r for r, _, _ in self._pending if not isinstance(r, tuple)]
        self._pending.clear()
        wait(futures)  # none still reads a buffer of this layer once it returns
        if self._own is not None:
            self._own.shutdown()

    def finish(self) -> LayerBlob:
        try:
            if self.fill:
                self._block()
            while self._pending:
                self._write_oldest()
        except BaseException:
            self.abort()
            raise
        if self._own is not None:
            self._own.shutdown()
        self._emit(self.stream.trailer(self.crc, self.offset))
        diff_id = "sha256:" + self.diff.hexdigest()
        digest = "sha256:" + self.digest.hexdigest() if self.compressed else diff_id
        return LayerBlob(digest, diff_id, self.size, self.md5 and self.md5.hexdigest(),
                         self.offset, self.compressed)
