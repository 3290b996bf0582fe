"""A store-like tree for the benchmarks, copied from this machine's /usr.

Real files compress like real store paths do (ELF libraries, scripts, text,
already-compressed man pages), which made-up bytes would not.  Each source
folder becomes one "store path" named `<hash>-<name>`; `scale` repeats the
set under other hashes for larger closures.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil

DEFAULT_ROOT = "/var/tmp/nix-image-registry-bench"

# (name, source): many small files...
SMALL = [
    ("doc", "/usr/share/doc"),
    ("man", "/usr/share/man"),
    ("python3.11", "/usr/lib/python3.11"),
    ("python3-dist", "/usr/lib/python3"),
    ("perl", "/usr/share/perl"),
    ("zoneinfo", "/usr/share/zoneinfo"),
    ("i18n", "/usr/share/i18n"),
    ("locale", "/usr/share/locale"),
]
# ... and some large ones, a file or two each.
LARGE = [
    ("llvm-15", ["/usr/lib/x86_64-linux-gnu/libLLVM-15.so.1"]),
    ("nodejs", ["/usr/bin/node"]),
    ("dockerd", ["/usr/sbin/dockerd"]),
]


def store_name(name, copy):
    digest = hashlib.sha256(f"{name}-{copy}".encode()).hexdigest()
    # Nix's hash alphabet, so names look and sort like store paths
    alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
    h = "".join(alphabet[int(digest[i:i + 2], 16) % 32] for i in range(0, 64, 2))
    return f"{h}-{name}"


def build(root=DEFAULT_ROOT, scale=1):
    """Create (once) and return the store paths of the corpus."""
    store = os.path.join(root, f"store-x{scale}")
    done = os.path.join(store, ".complete")
    paths = []
    for copy in range(scale):
        for name, _ in SMALL + LARGE:
            paths.append(os.path.join(store, store_name(name, copy)))
    if os.path.exists(done):
        return sorted(paths)
    shutil.rmtree(store, ignore_errors=True)
    os.makedirs(store)
    for copy in range(scale):
        for name, src in SMALL:
            if os.path.isdir(src):
                # a symlink out of the tree stays a symlink, as in the store
                shutil.copytree(src, os.path.join(store, store_name(name, copy)), symlinks=True)
        for name, files in LARGE:
            dst = os.path.join(store, store_name(name, copy), "lib")
            os.makedirs(dst)
            for f in files:
                if os.path.exists(f):
                    shutil.copyfile(f, os.path.join(dst, os.path.basename(f)))
    paths = [p for p in paths if os.path.exists(p)]
    open(done, "w").close()
    return sorted(paths)


def describe(paths):
    files = size = 0
    for p in paths:
        for dirpath, dirnames, filenames in os.walk(p):
            for f in filenames:
                st = os.lstat(os.path.join(dirpath, f))
                files += 1
                size += st.st_size
    return files, size


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default=DEFAULT_ROOT)
    parser.add_argument("--scale", type=int, default=1)
    args = parser.parse_args()
    paths = build(args.root, args.scale)
    files, size = describe(paths)
    print(f"{len(paths)} store paths, {files} files, {size / 1e6:.0f} MB under {args.root}")
