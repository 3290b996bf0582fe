"""How much of what users pull is shared between images, per layering.

Builds 10 images with overlapping package sets from the test package set
(tests/pkgs: its `bench` packages have sizes like real ones), in order,
into fresh storage for each layering:

- ours with NIX_POPULARITY_URL: popularity-weighted grouping
  (builders/layers/grouping.py) with counts made the way nixpkgs popularity data is,
  over the package set: for each name, how many of its packages need it;
- ours without it: the counts derived from the images built before;
- one layer per image (plus the symlink layer);
- one layer per store path, truncated at the budget: the first
  (budget - 1) paths in store order get a layer each, the rest share one.

Prints, per layering, the unique bytes stored over the sum of the images'
sizes, and the bytes a client pulls for image k when it already has images
1..k-1.

    NIX_CONFIG='substituters =' .venv/bin/python bench/sharing.py [--max-layers 100]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from app import make_images  # noqa: E402
from app.config import Config  # noqa: E402
from builders.layers import grouping  # noqa: E402
from builders.image.names import Image  # noqa: E402
from storage import FilesystemStorage  # noqa: E402

PKGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "pkgs")

IMAGES = [
    "bench.python",
    "bench.git",
    "bench.curl/bench.htop",
    "bench.vim",
    "bench.bash/bench.coreutils",
    "bench.git/bench.python",
    "bench.perl",
    "bench.bash/bench.curl/bench.git",
    "bench.htop/bench.python",
    "bench.coreutils/bench.vim/wide",
]

# The packages popularity is counted over.
PACKAGE_SET = ["bench." + n for n in (
    "glibc zlib openssl ncurses readline bash coreutils perl-modules perl libssh2 curl git "
    "htop python-stdlib python vim").split()] + ["hello", "git", "htop", "curl", "wide"]

_ours = grouping.group


def one_per_image(closure, budget, popularity=None, roots=None, threshold=None):
    return [tuple(sorted(p.path for p in closure))]


def one_per_path_truncated(closure, budget, popularity=None, roots=None, threshold=None):
    ordered = sorted(p.path for p in closure)
    if len(ordered) <= budget:
        return [(p,) for p in ordered]
    return [(p,) for p in ordered[:budget - 1]] + [tuple(ordered[budget - 1:])]


LAYERINGS = [("ours, popularity URL", _ours), ("ours, derived", _ours),
             ("one layer per image", one_per_image),
             ("one per path, truncated", one_per_path_truncated)]


def package_set_popularity(path):
    """{name: how many packages of the set need it}, written to `path`."""
    counts = collections.Counter()
    for attr in PACKAGE_SET:
        out = subprocess.run(["nix-build", PKGS, "-A", attr, "--no-out-link"], check=True,
                             capture_output=True, text=True).stdout.strip()
        closure = subprocess.run(["nix-store", "-qR", out], check=True, capture_output=True,
                                 text=True).stdout.split()
        counts.update(os.path.basename(p).split("-", 1)[-1] for p in closure)
    with open(path, "w") as f:
        json.dump(counts, f)


def run(layering, max_layers, scratch, popularity_url=None):
    grouping.group = layering  # the builder groups through this module function
    try:
        with tempfile.TemporaryDirectory(dir=scratch) as root:
            config = Config(pkgs_path=PKGS, storage_path=root, nix_timeout=600,
                            max_layers=max_layers, popularity_url=popularity_url)
            svc = make_images(config, FilesystemStorage(root))
            return [svc.image(Image.from_name(name), "latest").layers for name in IMAGES]
    finally:
        grouping.group = _ours


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-layers", type=int, default=100)
    parser.add_argument("--scratch", default=None)
    args = parser.parse_args()
    os.environ.setdefault("NIX_CONFIG", "substituters =")

    results = {}
    with tempfile.NamedTemporaryFile(suffix=".json") as pop:
        package_set_popularity(pop.name)
        for name, layering in LAYERINGS:
            url = "file://" + pop.name if "URL" in name else None
            results[name] = run(layering, args.max_layers, args.scratch, url)

    print(f"{len(IMAGES)} images, at most {args.max_layers} layers each")
    header = f"{'':4} {'image':32}" + "".join(f"{n:>25}" for n, _ in LAYERINGS)
    print("MB pulled for image k, given images 1..k-1 (image size in brackets)")
    print(header)
    have = {n: set() for n, _ in LAYERINGS}
    totals = {n: [0, 0, 0] for n, _ in LAYERINGS}  # pulled, sum of sizes, layers
    for k, image in enumerate(IMAGES):
        row = f"{k + 1:<4} {image:32}"
        for n, _ in LAYERINGS:
            image_layers = results[n][k]
            size = sum(l["size"] for l in image_layers)
            pulled = sum(l["size"] for l in {l["digest"]: l for l in image_layers}.values()
                         if l["digest"] not in have[n])
            have[n].update(l["digest"] for l in image_layers)
            totals[n][0] += pulled
            totals[n][1] += size
            totals[n][2] = max(totals[n][2], len(image_layers))
            row += f"{pulled / 1e6:12.1f} ({size / 1e6:5.1f}) {len(image_layers):3}L"
        print(row)
    print()
    for n, _ in LAYERINGS:
        pulled, total, most = totals[n]
        print(f"{n:26} unique stored / sum of image sizes: {pulled / 1e6:6.1f} / "
              f"{total / 1e6:6.1f} MB = {pulled / total:.3f}; pulled after image 1: "
              f"{(pulled - sum(l['size'] for l in results[n][0])) / 1e6:6.1f} MB; "
              f"most layers in an image: {most}")


if __name__ == "__main__":
    main()
