"""The registry behind nginx (deploy/nginx.conf) against nginx alone,
measured in one run on 127.0.0.1.

deploy/nginx.conf puts nginx in front of gunicorn: for a GET of a blob
over 8 MiB the registry only checks the blob and answers
`X-Accel-Redirect`, and nginx sends the file; a smaller blob the registry
sends once and nginx keeps, so the 1.1 MB layer measures nginx's cache
(and a cached manifest by tag is kept 2 s).  What that costs, at 16
connections:

- blob GET, MB/s: nginx + registry vs nginx alone serving the very same
  file from the storage folder (a plain static server, bench/serve.py's);
  target: at least 0.9x for the 9 MB and 50 MB layers, 0.8x for the 1 MB
  one, where the cost of a request (the hop to gunicorn and the registry's
  own checks) weighs most against the cost of the bytes.
- blob GET, p99 latency on the 9 MB layer: nginx + registry vs nginx
  alone; target: within 2x.  (Python sending the bytes itself had a p99
  ten times nginx's: docs/benchmarks.md, "Tail latency of large blobs".)
- cached manifest GET by tag: nginx + registry vs the registry directly
  (gunicorn), to say what the hop costs; no target.
- the worker's floor (gunicorn with app/http/worker.py), for the layers below
  4 MB, where the cost of a request weighs most: nginx in front of
  bench/floor.py (a WSGI app that only answers X-Accel-Redirect, under
  gunicorn.conf.py's settings) vs nginx alone, and the registry vs that
  floor.  No target: it says how much of what the worker allows here the
  registry reaches.

The layers are the largest of each of --blob-images, built in that order
into fresh storage with the registry's derived layering (no
NIX_POPULARITY_URL), so by default: shell/hello's 1.1 MB layer,
bench.glibc's 8.9 MB one, and bench.git's 50.2 MB one (everything of git
but glibc, which its own image put in a layer of its own).

As in bench/serve.py, the servers run side by side; each comparison is
measured as pairs, the two sides back to back and the order swapped each
round, and judged by the median of its per-round ratios, so load from other
work on the machine falls on both sides alike.  Exits 1 if a target is
missed or a request failed.

    ./.venv/bin/python -m bench.nginx [--seconds 5] [--rounds 5]
                                      [--blob-images shell/hello,bench.glibc,bench.git]
                                      [--latency-image bench.glibc] [--image shell/hello]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import uuid

import requests

from app.front import CACHED_BLOB_MAX
from storage import keys
from tests.nginx import render

from .common import (OCI_MANIFEST, Process, free_port, median, ms, need, registry, servers,
                     wrk)
from .floor import ACCEL
from .serve import largest_layer, nginx


BLOB_TARGET = 0.9        # nginx + registry / nginx alone, MB/s, layers from SMALL_BLOB up
SMALL_BLOB_TARGET = 0.8  # the same below SMALL_BLOB bytes
SMALL_BLOB = 4_000_000
P99_TARGET = 2.0         # nginx + registry / nginx alone, p99 on --latency-image's layer, at most


def front(workdir, upstream, storage_root, name="front", reports=None) -> tuple[Process, str]:
    """Debian's nginx with deploy/nginx.conf, its machine-specific values
    set as tests/e2e/test_nginx.py sets them: this port, our gunicorn, our
    storage folder, and where the registry takes its reports (`reports`,
    its NIXERY_FRONT_REPORTS)."""
    port = free_port()
    prefix = os.path.join(workdir, name)
    os.makedirs(prefix, exist_ok=True)
    conf_path = os.path.join(prefix, "nginx.conf")
    with open(conf_path, "w") as f:
        f.write(render(listen=f"127.0.0.1:{port}", upstream=upstream, storage_root=storage_root,
                       runtime=prefix, reports=reports))
    # workers as root so that they enter the bench's private work folder
    proc = Process(["nginx", "-c", conf_path, "-g", "daemon off; user root;"],
                   os.path.join(prefix, "stdout.log"))
    host = f"127.0.0.1:{port}"
    proc.wait_http(f"http://{host}/v2/")
    return proc, host


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def check_blob(ours, front_host, static_host, image, layer):
    """Both sides send the file's bytes, and the front's answer came from
    the registry: its headers, and a line of the registry's access log with
    this request's id that says the registry sent 0 bytes of it (nginx did),
    or, for a blob nginx keeps (app/front.py's CACHED_BLOB_MAX), all of
    them, once: nginx answers from its cache after that."""
    digest = layer["digest"]
    path = os.path.join(ours.env["STORAGE_PATH"], keys.blob(digest))
    on_disk = file_sha256(path)
    if on_disk != digest:
        sys.exit(f"{path} holds {on_disk}, not {digest}")
    rid = f"bench-nginx-{uuid.uuid4().hex[:12]}"
    r = requests.get(f"http://{front_host}/v2/{image}/blobs/{digest}",
                     headers={"X-Request-ID": rid}, timeout=120)
    r.raise_for_status()
    got = "sha256:" + hashlib.sha256(r.content).hexdigest()
    if got != on_disk:
        sys.exit(f"nginx + registry served {got} for {image}'s {digest}, the file is {on_disk}")
    if (r.headers.get("Docker-Content-Digest") != digest or r.headers.get("X-Request-ID") != rid
            or "X-Accel-Redirect" in r.headers):
        sys.exit(f"nginx + registry answered {digest} without the registry's headers: "
                 f"{dict(r.headers)}")
    sent = 0 if layer["size"] > CACHED_BLOB_MAX else layer["size"]
    want = f'"GET /v2/{image}/blobs/{digest}" 200 {sent} '
    end = time.monotonic() + 10
    while not any(f"[{rid}]" in line and want in line for line in ours.read_log().splitlines()):
        if time.monotonic() > end:
            sys.exit(f"the registry's log has no {want!r} line for request {rid}: "
                     "the blob did not go through the registry, or the registry sent its bytes")
        time.sleep(0.2)
    r = requests.get(f"http://{static_host}/{keys.blob(digest)}", timeout=120)
    r.raise_for_status()
    got = "sha256:" + hashlib.sha256(r.content).hexdigest()
    if got != on_disk:
        sys.exit(f"nginx alone served {got} for {keys.blob(digest)}, the file is {on_disk}")


def check_floor(floor_host, layer):
    """The floor's nginx sends the same bytes."""
    r = requests.get(f"http://{floor_host}/v2/floor/blobs/{layer['digest']}", timeout=120)
    r.raise_for_status()
    got = "sha256:" + hashlib.sha256(r.content).hexdigest()
    if got != layer["digest"]:
        sys.exit(f"nginx + bench/floor.py served {got} for {layer['digest']}")


def check_manifest(ours, front_host, image):
    """The same manifest directly and through nginx, the registry's headers on both."""
    url = f"/v2/{image}/manifests/latest"
    direct = requests.get(ours.url + url, headers={"Accept": OCI_MANIFEST}, timeout=60)
    fronted = requests.get(f"http://{front_host}{url}", headers={"Accept": OCI_MANIFEST},
                           timeout=60)
    for r in (direct, fronted):
        r.raise_for_status()
    if (fronted.content != direct.content or "Docker-Content-Digest" not in fronted.headers
            or fronted.headers["Docker-Content-Digest"] != direct.headers["Docker-Content-Digest"]):
        sys.exit(f"the manifest of {image} differs through nginx: {dict(fronted.headers)}")


def build(ours, image) -> dict:
    """The image's manifest, built on this first GET."""
    r = requests.get(f"{ours.url}/v2/{image}/manifests/latest",
                     headers={"Accept": OCI_MANIFEST}, timeout=900)
    if r.status_code != 200:
        sys.exit(f"{image}: {r.status_code} {r.text[:2000]}")
    return r.json()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default="shell/hello",
                    help="image whose cached manifest is measured (default shell/hello)")
    ap.add_argument("--blob-images", default="shell/hello,bench.glibc,bench.git",
                    help="images whose largest layer is measured, built in this order "
                         "(default: layers of 1.1, 8.9 and 50.2 MB)")
    ap.add_argument("--latency-image", default="bench.glibc",
                    help="the one of --blob-images whose layer's p99 is judged (default: 8.9 MB)")
    ap.add_argument("--seconds", type=int, default=5, help="length of one measurement")
    ap.add_argument("--rounds", type=int, default=5, help="rounds over all comparisons")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--keep", action="store_true", help="keep the work folder and logs")
    args = ap.parse_args(argv)
    blob_images = args.blob_images.split(",")
    if args.latency_image not in blob_images:
        ap.error(f"--latency-image {args.latency_image} is not one of --blob-images")
    need("wrk", "nginx", "nix-instantiate")

    with servers("bench-nginx-", keep=args.keep) as (workdir, stack):
        # a build of the larger images may outlast the default pull wait and
        # Nix timeout on a cold store; these GETs wait for it instead
        # nginx's reports, in a file as deploy/nginx.conf writes them
        reports = os.path.join(workdir, "front-reports")
        ours = registry(os.path.join(workdir, "registry"), NIXERY_BLOB_ACCEL=ACCEL,
                        NIX_TIMEOUT="600", NIXERY_PULL_WAIT="600",
                        NIXERY_FRONT_REPORTS=reports).start()
        stack.append(ours)
        build(ours, args.image)
        layers = {image: largest_layer(build(ours, image)) for image in blob_images}

        fr, front_host = front(workdir, ours.host, ours.env["STORAGE_PATH"], reports=reports)
        stack.append(fr)
        static, static_host = nginx(workdir, ours.env["STORAGE_PATH"])
        stack.append(static)
        floor = registry(os.path.join(workdir, "floor"), app="bench.floor:app").start()
        stack.append(floor)
        floor_front, floor_host = front(workdir, floor.host, ours.env["STORAGE_PATH"],
                                        name="front-floor")
        stack.append(floor_front)

        check_manifest(ours, front_host, args.image)
        for image, layer in layers.items():
            check_blob(ours, front_host, static_host, image, layer)
            check_floor(floor_host, layer)

        name = args.image
        urls = {
            "registry manifest": f"{ours.url}/v2/{name}/manifests/latest",
            "nginx+registry manifest": f"http://{front_host}/v2/{name}/manifests/latest",
        }
        pairs = {"manifest": ("nginx+registry manifest", "registry manifest")}
        sizes = {}
        for image, layer in layers.items():
            size = f"{layer['size'] / 1e6:.1f} MB"
            sizes[size] = (image, layer)
            urls[f"nginx+registry blob {size}"] = \
                f"http://{front_host}/v2/{image}/blobs/{layer['digest']}"
            urls[f"nginx blob {size}"] = f"http://{static_host}/{keys.blob(layer['digest'])}"
            pairs[f"blob {size}"] = (f"nginx+registry blob {size}", f"nginx blob {size}")
            if layer["size"] < SMALL_BLOB:
                urls[f"nginx+floor blob {size}"] = \
                    f"http://{floor_host}/v2/{image}/blobs/{layer['digest']}"
                pairs[f"floor blob {size}"] = (f"nginx+floor blob {size}", f"nginx blob {size}")

        accept = [f"Accept: {OCI_MANIFEST}"]
        runs = {label: [] for label in urls}

        def measure(label, seconds):
            return wrk(urls[label], connections=args.connections, seconds=seconds,
                       headers=accept if "manifest" in label else ())

        load_before = os.getloadavg()[0]
        for label in urls:  # warm up: page cache, the registry's per-worker checks
            measure(label, 2)
        # per round and comparison: req/s (manifests), MB/s (blobs), p99 (both)
        ratios = {kind: {"rps": [], "mb_s": [], "p99_us": []} for kind in pairs}
        for i in range(args.rounds):
            for kind, (mine, base) in pairs.items():
                order = (mine, base) if i % 2 == 0 else (base, mine)
                for label in order:
                    runs[label].append(measure(label, args.seconds))
                for unit, per_round in ratios[kind].items():
                    per_round.append(runs[mine][-1][unit] / runs[base][-1][unit])

        blobs = "; ".join(f"{size}: the largest layer of {image}, {layer['digest'][:19]}..."
                          for size, (image, layer) in sizes.items())
        print(f"\nmanifest GET of {name} ({OCI_MANIFEST}); blobs {blobs}; "
              f"wrk -t2 -c{args.connections}, {args.rounds} rounds x {args.seconds}s; "
              f"{os.cpu_count()} cores, load average {load_before:.1f} before, "
              f"{os.getloadavg()[0]:.1f} after")
        print(f"{'target':28} {'req/s':>7} {'MB/s':>7} {'p50':>9} {'p99':>9}   failed  "
              "per round (req/s)")
        ok = True
        for label, results in runs.items():
            s = {k: median([r[k] for r in results]) for k in ("rps", "mb_s", "p50_us", "p99_us")}
            bad = sum(r["status_errors"] + r["socket_errors"] + r["timeouts"] for r in results)
            per_round = " ".join(f"{r['rps']:.0f}" for r in results)
            print(f"{label:28} {s['rps']:7.0f} {s['mb_s']:7.1f} {ms(s['p50_us']):>9} "
                  f"{ms(s['p99_us']):>9}  {bad:7d}  {per_round}")
            if bad:
                print(f"  {label}: {bad} failed requests; wrk said:\n{results[-1]['stdout']}")
                ok = False

        def rounds(values):
            return " ".join(f"{v:.2f}" for v in values)

        print()
        r = ratios["manifest"]
        print(f"cached manifest GET, nginx+registry / registry directly: req/s "
              f"{median(r['rps']):.2f}x (per round {rounds(r['rps'])}), p99 "
              f"{median(r['p99_us']):.2f}x (per round {rounds(r['p99_us'])}); no target")
        for size, (image, layer) in sizes.items():
            r = ratios[f"blob {size}"]
            target = BLOB_TARGET if layer["size"] >= SMALL_BLOB else SMALL_BLOB_TARGET
            ratio = median(r["mb_s"])
            print(f"blob GET of a {size} layer, nginx+registry / nginx alone MB/s: {ratio:.2f}x "
                  f"(per round {rounds(r['mb_s'])}; target >= {target}x: "
                  f"{'met' if ratio >= target else 'MISSED'})")
            ok = ok and ratio >= target
            if f"floor blob {size}" in ratios:
                floor_r = ratios[f"floor blob {size}"]["mb_s"]
                of_floor = [mine / base for mine, base in zip(r["mb_s"], floor_r)]
                print(f"blob GET of a {size} layer, nginx+floor / nginx alone MB/s: "
                      f"{median(floor_r):.2f}x (per round {rounds(floor_r)}): the worker's floor "
                      f"here; the registry reaches {median(of_floor):.2f}x of it "
                      f"(per round {rounds(of_floor)}); no target")
            p99 = median(r["p99_us"])
            if image == args.latency_image:
                print(f"blob GET of a {size} layer, nginx+registry / nginx alone p99: {p99:.2f}x "
                      f"(per round {rounds(r['p99_us'])}; target <= {P99_TARGET}x: "
                      f"{'met' if p99 <= P99_TARGET else 'MISSED'})")
                ok = ok and p99 <= P99_TARGET
            else:
                print(f"blob GET of a {size} layer, nginx+registry / nginx alone p99: {p99:.2f}x "
                      f"(per round {rounds(r['p99_us'])}; no target)")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
