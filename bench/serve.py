"""Serving speed against two baselines, measured in one run on 127.0.0.1.

- cached manifest GET by tag: our registry vs Debian's `docker-registry`
  (the distribution registry) holding the same image, copied in with skopeo;
  target: ours >= 2x distribution's requests/s at 16 connections.
- blob GET: our registry vs nginx serving the very same file from our
  storage folder; target: ours >= 0.8x nginx's MB/s.  Measured for the
  largest layer of each of --blob-images (by default a 1 MB, a 12 MB and
  a 59 MB layer), since for small layers the cost of a request decides
  and for large ones the cost of the bytes.

The three servers run side by side; each comparison is measured as pairs,
ours and the baseline back to back, in rounds, and judged by the median of
the per-round ratios, so load from other work on the machine falls on both
sides alike.

    ./.venv/bin/python -m bench.serve [--image shell/hello] [--seconds 5] [--rounds 7]
                                      [--blob-images shell/hello,bench.glibc,bench.git]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys

import requests

from storage import keys

from .common import (DOCKER_MANIFEST, OCI_MANIFEST, Process, free_port, median, ms, need,
                     registry, servers, wrk)

MANIFEST_TARGET = 2.0  # ours / distribution, requests/s
BLOB_TARGET = 0.8      # ours / nginx, MB/s


def distribution(workdir) -> tuple[Process, str]:
    """Debian's docker-registry with filesystem storage, configured as its
    package ships it (in-memory blob descriptor cache), on 127.0.0.1."""
    port = free_port()
    config = os.path.join(workdir, "distribution.yml")
    with open(config, "w") as f:
        f.write(f"""version: 0.1
log:
  level: info
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: {workdir}/distribution-data
  delete:
    enabled: false
http:
  addr: 127.0.0.1:{port}
""")
    host = f"127.0.0.1:{port}"
    proc = Process(["docker-registry", "serve", config], os.path.join(workdir, "distribution.log"))
    proc.wait_http(f"http://{host}/v2/")
    return proc, host


def nginx(workdir, root, *, name="nginx", locations="", access_log=True) -> tuple[Process, str]:
    """nginx serving `root` (our storage folder) with sendfile, as a static
    file server is usually set up; one worker per core like ours.
    `locations` are added to its server block."""
    port = free_port()
    prefix = os.path.join(workdir, name)
    os.makedirs(prefix, exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    # Our storage files are private to their owner: workers run as the same
    # user as the master so they can read them (only honoured under root).
    user = "user root root;" if os.getuid() == 0 else ""
    with open(conf, "w") as f:
        f.write(f"""{user}
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log {f"{prefix}/access.log" if access_log else "off"};
  sendfile on;
  tcp_nopush on;
  # wrk keeps its connections for the whole run, as our gunicorn allows
  keepalive_requests 1000000;
  types {{ }}
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{port};
    root {root};
    {locations}
  }}
}}
""")
    proc = Process(["nginx", "-p", prefix, "-e", f"{prefix}/error.log", "-c", conf,
                    "-g", "daemon off;"], os.path.join(prefix, "stdout.log"))
    host = f"127.0.0.1:{port}"
    proc.wait_http(f"http://{host}/")
    return proc, host


def largest_layer(manifest) -> dict:
    return max(manifest["layers"], key=lambda l: l["size"])


def sha256_of(url, headers=None) -> str:
    r = requests.get(url, headers=headers or {}, timeout=60)
    r.raise_for_status()
    return "sha256:" + hashlib.sha256(r.content).hexdigest()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default="shell/hello", help="image to serve (default shell/hello)")
    ap.add_argument("--seconds", type=int, default=5, help="length of one measurement")
    ap.add_argument("--rounds", type=int, default=7, help="rounds over all targets")
    ap.add_argument("--blob-images", default="shell/hello,bench.glibc,bench.git",
                    help="images whose largest layer is measured against nginx "
                         "(default: layers of 1, 12 and 59 MB)")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--keep", action="store_true", help="keep the work folder and logs")
    args = ap.parse_args(argv)
    need("wrk", "nginx", "docker-registry", "skopeo", "nix-instantiate")

    with servers("bench-serve-", keep=args.keep) as (workdir, stack):
        ours = registry(os.path.join(workdir, "ours")).start()
        stack.append(ours)
        name = args.image
        # the first GET builds the image; everything measured after is cached
        r = requests.get(f"{ours.url}/v2/{name}/manifests/latest",
                         headers={"Accept": OCI_MANIFEST}, timeout=300)
        r.raise_for_status()

        dist, dist_host = distribution(workdir)
        stack.append(dist)
        subprocess.run(["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                        f"docker://{ours.host}/{name}:latest",
                        f"docker://{dist_host}/{name}:latest"],
                       check=True, capture_output=True, timeout=300)

        # skopeo may store either format; measure both servers on the one
        # distribution holds, so both send the same bytes
        media_type = digest = None
        for candidate in (OCI_MANIFEST, DOCKER_MANIFEST):
            theirs = requests.get(f"http://{dist_host}/v2/{name}/manifests/latest",
                                  headers={"Accept": candidate}, timeout=30)
            if theirs.status_code == 200 and theirs.headers["Content-Type"] == candidate:
                media_type, digest = candidate, theirs.headers["Docker-Content-Digest"]
                break
        if media_type is None:
            sys.exit(f"distribution does not serve {name}:latest after the copy")
        mine = requests.get(f"{ours.url}/v2/{name}/manifests/latest",
                            headers={"Accept": media_type}, timeout=30)
        if mine.headers.get("Docker-Content-Digest") != digest:
            sys.exit(f"the manifests differ: ours {mine.headers.get('Docker-Content-Digest')}, "
                     f"distribution's {digest}")
        layer = largest_layer(mine.json())

        ng, ng_host = nginx(workdir, ours.env["STORAGE_PATH"])
        stack.append(ng)
        urls = {
            "ours manifest": f"{ours.url}/v2/{name}/manifests/latest",
            "distribution manifest": f"http://{dist_host}/v2/{name}/manifests/latest",
            "distribution blob": f"http://{dist_host}/v2/{name}/blobs/{layer['digest']}",
        }
        pairs = {"manifest": ("ours manifest", "distribution manifest", "rps")}
        sizes = {}
        serves = {"distribution blob": layer["digest"]}  # what each blob URL must serve
        for image in args.blob_images.split(","):
            if image == name:
                blob_layer = layer
            else:  # built here, and not copied to distribution
                blob_layer = largest_layer(requests.get(
                    f"{ours.url}/v2/{image}/manifests/latest",
                    headers={"Accept": OCI_MANIFEST}, timeout=600).json())
            size = f"{blob_layer['size'] / 1e6:.1f} MB"
            sizes[size] = (image, blob_layer["digest"])
            urls[f"ours blob {size}"] = f"{ours.url}/v2/{image}/blobs/{blob_layer['digest']}"
            urls[f"nginx blob {size}"] = f"http://{ng_host}/{keys.blob(blob_layer['digest'])}"
            serves[f"ours blob {size}"] = serves[f"nginx blob {size}"] = blob_layer["digest"]
            pairs[f"blob {size}"] = (f"ours blob {size}", f"nginx blob {size}", "mb_s")
        for label, want in serves.items():
            got = sha256_of(urls[label])
            if got != want:
                sys.exit(f"{label} served {got}, not {want}")

        accept = [f"Accept: {media_type}"]
        runs = {label: [] for label in urls}

        def measure(label, seconds):
            return wrk(urls[label], connections=args.connections, seconds=seconds,
                       headers=accept if "manifest" in label else ())

        load_before = os.getloadavg()[0]
        for label in urls:  # warm up: page cache, per-worker digest checks, Go's caches
            measure(label, 2)
        # Each comparison is a pair measured back to back, the order swapped
        # every round, and judged by the median of its per-round ratios: the
        # machine is shared, and a burst of other work then hits one pair,
        # not one side of every comparison.
        ratios = {kind: [] for kind in pairs}
        for i in range(args.rounds):
            for kind, (mine_label, base_label, unit) in pairs.items():
                order = (mine_label, base_label) if i % 2 == 0 else (base_label, mine_label)
                for label in order:
                    runs[label].append(measure(label, args.seconds))
                ratios[kind].append(runs[mine_label][-1][unit] / runs[base_label][-1][unit])
            runs["distribution blob"].append(measure("distribution blob", args.seconds))

        blobs = "; ".join(f"{size}: the largest layer of {image}, {digest[:19]}..."
                          for size, (image, digest) in sizes.items())
        print(f"\nserving {name} ({media_type}); blobs {blobs}; "
              f"wrk -t2 -c{args.connections}, {args.rounds} rounds x {args.seconds}s; "
              f"{os.cpu_count()} cores, load average {load_before:.1f} before, "
              f"{os.getloadavg()[0]:.1f} after")
        print(f"{'target':22} {'req/s':>7} {'MB/s':>7} {'p50':>9} {'p99':>9}   failed  "
              "per round (req/s)")
        for label, results in runs.items():
            s = {k: median([r[k] for r in results]) for k in ("rps", "mb_s", "p50_us", "p99_us")}
            bad = sum(r["status_errors"] + r["socket_errors"] + r["timeouts"] for r in results)
            print(f"{label:22} {s['rps']:7.0f} {s['mb_s']:7.1f} {ms(s['p50_us']):>9} "
                  f"{ms(s['p99_us']):>9}  {bad:7d}  " + " ".join(f"{r['rps']:.0f}" for r in results))
            if bad:
                print(f"  {label}: {bad} failed requests; wrk said:\n{results[-1]['stdout']}")

        print()
        ok = not any(r["status_errors"] + r["socket_errors"] + r["timeouts"]
                     for results in runs.values() for r in results)
        verdicts = [("manifest", "cached manifest GET, ours / distribution req/s",
                     MANIFEST_TARGET)]
        verdicts += [(f"blob {size}", f"blob GET of a {size} layer, ours / nginx MB/s",
                      BLOB_TARGET) for size in sizes]
        for kind, title, target in verdicts:
            ratio = median(ratios[kind])
            print(f"{title}: {ratio:.2f}x (per round {' '.join(f'{r:.2f}' for r in ratios[kind])}; "
                  f"target >= {target}x: {'met' if ratio >= target else 'MISSED'})")
            ok = ok and ratio >= target
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
