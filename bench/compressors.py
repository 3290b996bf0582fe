"""Which deflate makes layers: speed and size of each compressor and level.

Compresses the tar stream of the benchmark corpus (bench/corpus.py) with
every candidate, in the 1 MiB blocks the layer writer uses, on one thread
and on as many threads as there are cores (each thread a stream of its own,
as when several layers are made at once).  Sizes are relative to zlib -6,
measured in the same run; the default must stay within 15% of it.

    .venv/bin/python bench/compressors.py [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import corpus  # noqa: E402
from builders.layers.compress import Compression  # noqa: E402
from builders.layers.tarball import BLOCK  # noqa: E402

CANDIDATES = [("zlib", 6), ("zlib", 1), ("zlib-ng", 6), ("zlib-ng", 3), ("zlib-ng", 2),
              ("zlib-ng", 1), ("isal", 3), ("isal", 2), ("isal", 1), ("isal", 0)]
LIMIT = 1.15


def compress_all(compression, blocks):
    gz = compression.gzip(BLOCK)
    n = 0
    for b in blocks:
        n += len(gz.compress(b))
    return n + len(gz.finish())


def measure(compression, blocks, threads):
    sizes = []

    def run():
        sizes.append(compress_all(compression, blocks))

    workers = [threading.Thread(target=run) for _ in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sizes[0], time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=corpus.DEFAULT_ROOT)
    parser.add_argument("--repeat", type=int, default=1,
                        help="best of N timings per candidate (other load on the machine only slows)")
    args = parser.parse_args()
    paths = corpus.build(args.root)
    with tempfile.TemporaryFile() as f:
        subprocess.run(["tar", "--sort=name", "--owner=0", "--group=0", "--numeric-owner",
                        "--mtime=@1", "-cf", "-", *paths], stdout=f, check=True)
        f.seek(0)
        data = f.read()
    view = memoryview(data)
    blocks = [view[i:i + BLOCK] for i in range(0, len(data), BLOCK)]
    cores = os.cpu_count() or 1
    print(f"tar stream of the corpus: {len(data) / 1e6:.0f} MB; {cores} cores")
    print(f"{'compressor':12} {'size MB':>8} {'vs zlib -6':>10} {'MB/s 1 thread':>14} "
          f"{f'MB/s {cores} threads':>15}")
    base = None
    rows = []
    for kind, level in CANDIDATES:
        c = Compression(kind, level)
        size, seconds = min(measure(c, blocks, 1) for _ in range(args.repeat))
        par_seconds = min(measure(c, blocks, cores)[1] for _ in range(args.repeat))
        base = base or size
        ratio = size / base
        rows.append((c, ratio, len(data) / seconds))
        print(f"{str(c):12} {size / 1e6:8.1f} {ratio:10.3f} {len(data) / seconds / 1e6:14.0f} "
              f"{cores * len(data) / par_seconds / 1e6:15.0f}", flush=True)
    fit = [r for r in rows if r[1] <= LIMIT]
    best = max(fit, key=lambda r: r[2])
    print(f"fastest within {LIMIT:.2f}x of zlib -6: {best[0]} ({best[1]:.3f}x, {best[2] / 1e6:.0f} MB/s)")


if __name__ == "__main__":
    main()
