"""Layer-making throughput on a large closure, against two baselines.

On the same store paths (bench/corpus.py: real files from /usr, many small
and some large, several hundred MB), in one run:

- ours: the closure grouped into layers, each layer made (tar -> sha256 ->
  gzip -> sha256 + MD5 -> a temporary file) on the service's layer pool;
  and the same again through LayerStore.store_layers into filesystem
  storage, which also verifies each blob as it stores it;
- `tar --sort=name -cf - PATHS | gzip -6 | sha256sum`: a zlib -6 pipeline
  (target: ours at least 5x faster);
- `tar --sort=name -cf - PATHS | sha256sum`: no compression at all, the
  ceiling (target: ours within 2x of it).

Each figure is the best of --repeat runs, with the files in the page cache,
so load from other processes on the machine slows every contender alike.

    .venv/bin/python bench/throughput.py [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import corpus  # noqa: E402
from builders.layers import grouping, tarball  # noqa: E402
from builders.layers.compress import Compression  # noqa: E402
from builders.layers.layerstore import LayerStore  # noqa: E402
from builders.nixbuild.closure import StorePath  # noqa: E402
from storage import FilesystemStorage  # noqa: E402


def closure_of(paths):
    result = []
    for p in paths:
        size = 0
        for dirpath, _, files in os.walk(p):
            for f in files:
                size += os.lstat(os.path.join(dirpath, f)).st_size
        result.append(StorePath(p, size, ()))
    return result


def shell(cmd):
    start = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def make_layers(groups, compression, workers):
    def one(group):
        with tempfile.TemporaryFile() as f:
            return tarball.write_store_layer(group, f, compression)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        blobs = list(pool.map(one, groups))
    return time.perf_counter() - start, blobs


def store_layers(groups, compression, workers, scratch):
    root = tempfile.mkdtemp(dir=scratch)
    try:
        store = LayerStore(FilesystemStorage(root), compression, workers=workers)
        start = time.perf_counter()
        store.store_layers(groups, {"tmp": ("dir", 0o1777)})
        return time.perf_counter() - start
    finally:
        shutil.rmtree(root)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=corpus.DEFAULT_ROOT)
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--compressor", default=None, help="KIND or KIND:LEVEL (default: ours)")
    args = parser.parse_args()
    if args.compressor:
        kind, _, level = args.compressor.partition(":")
        compression = Compression(kind, int(level) if level else None)
    else:
        compression = Compression()
    workers = os.cpu_count() or 1

    paths = corpus.build(args.root, args.scale)
    closure = closure_of(paths)
    files, size = corpus.describe(paths)
    groups = grouping.group(closure, 99)
    quoted = " ".join(f"'{p}'" for p in paths)
    tar = f"tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1 -cf - {quoted}"
    shell(f"{tar} | cat > /dev/null")  # into the page cache, for every contender
    tar_bytes = int(subprocess.run(["bash", "-c", f"{tar} 2>/dev/null | wc -c"],
                                   capture_output=True, text=True).stdout)

    print(f"closure: {len(paths)} store paths, {files} files, {size / 1e6:.0f} MB "
          f"({tar_bytes / 1e6:.0f} MB of tar) in {len(groups)} layers; {workers} cores; "
          f"{compression}")
    best = {}

    def record(name, seconds):
        best[name] = min(best.get(name, seconds), seconds)

    for _ in range(args.repeat):
        record("tar | gzip -6 | sha256sum", shell(f"{tar} | gzip -6 | sha256sum"))
        record("tar | sha256sum", shell(f"{tar} | sha256sum"))
        seconds, blobs = make_layers(groups, compression, workers)
        record("ours: layers made", seconds)
        record("ours: layers made and stored", store_layers(groups, compression, workers,
                                                             args.root))
    gz = sum(b.size for b in blobs)
    print(f"our layers: {gz / 1e6:.0f} MB gzipped")
    for name, seconds in best.items():
        print(f"{name:32} {seconds:7.2f} s {tar_bytes / seconds / 1e6:7.0f} MB/s")
    ours = best["ours: layers made"]
    print(f"ours vs tar | gzip -6 | sha256sum: {best['tar | gzip -6 | sha256sum'] / ours:.1f}x "
          f"faster (target >= 5x)")
    print(f"ours vs tar | sha256sum: {ours / best['tar | sha256sum']:.2f}x its time "
          f"(target <= 2x)")
    stored = best["ours: layers made and stored"]
    print(f"made and stored: {best['tar | gzip -6 | sha256sum'] / stored:.1f}x faster than the "
          f"gzip pipeline, {stored / best['tar | sha256sum']:.2f}x the ceiling's time")


if __name__ == "__main__":
    main()
