"""Whole cached pulls/s: the registry direct, behind deploy/nginx.conf, and
the ceiling, nginx serving the same manifest and blob bytes as static files.

Each pull is what a client does on one kept-alive connection: HEAD and GET
of the manifest by tag, then HEAD and GET of the config and of every layer,
in order (bench/pull.c; wrk cannot send a HEAD).  Several clients pull at
once, for a many-layer and a few-layer image; each comparison is measured
back to back in rounds, the order turned each round, and judged by the
median of its per-round ratios.

    ./.venv/bin/python -m bench.pulls [--rounds 5] [--seconds 4] [--clients 8]

Targets: direct at least 0.7x the static ceiling, through deploy/nginx.conf
at least 0.8x.  Through nginx against direct is printed too, without a
target: it was the front's reason to be while direct ran the app for
every request; now that a worker gives a cached pull's answers again
without the app, direct is near the static ceiling as well.

Behind deploy/nginx.conf the registry runs as the shipped files run it
(NIXERY_BLOB_ACCEL, NIXERY_FRONT_REPORTS in a file): after the first pull
nginx answers from its cache, still asking the registry about credentials
every 5 s and reporting every answer to it.  After the rounds, the
registry's /metrics must count every answer the clients got through
nginx.  Exits 1 when a target is missed or an answer is not counted.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import requests

from .common import OCI_MANIFEST, Process, median, need, registry, servers
from .floor import ACCEL
from .nginx import front
from .serve import nginx

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGES = {"many layers": "shell/git/htop", "few layers": "hello"}
DIRECT_TARGET = 0.7
FRONT_TARGET = 0.8
ACCEPT = ("Accept: application/vnd.oci.image.manifest.v1+json,"
          "application/vnd.docker.distribution.manifest.v2+json")


def compile_client(workdir) -> str:
    need("cc")
    binary = os.path.join(workdir, "pull")
    subprocess.run(["cc", "-O2", "-pthread", "-o", binary, os.path.join(HERE, "pull.c")],
                   check=True)
    return binary


def pull_script(name, manifest) -> list[str]:
    """The requests of one pull of `name`, as bench/pull.c reads them."""
    lines = [f"HEAD /v2/{name}/manifests/latest {ACCEPT}", f"GET /v2/{name}/manifests/latest {ACCEPT}"]
    for blob in [manifest["config"], *manifest["layers"]]:
        lines += [f"HEAD /v2/{name}/blobs/{blob['digest']}", f"GET /v2/{name}/blobs/{blob['digest']}"]
    return lines


def static_nginx(workdir, storage_root, images) -> tuple[Process, str]:
    """nginx serving each image's manifest and blobs as files, with the
    registry's content types: what a registry serving static files could at
    best do on this machine (one worker per core, like ours)."""
    root = os.path.join(workdir, "static")
    for name, (manifest_bytes, manifest) in images.items():
        folder = os.path.join(root, "v2", name)
        os.makedirs(os.path.join(folder, "manifests"), exist_ok=True)
        os.makedirs(os.path.join(folder, "blobs"), exist_ok=True)
        with open(os.path.join(folder, "manifests", "latest"), "wb") as f:
            f.write(manifest_bytes)
        for blob in [manifest["config"], *manifest["layers"]]:
            target = os.path.join(folder, "blobs", blob["digest"])
            if not os.path.exists(target):
                os.symlink(os.path.join(storage_root, "layers", blob["digest"]), target)
    proc, host = nginx(workdir, root, name="static", access_log=False,
                       locations=f"location ~ /manifests/ {{ default_type {OCI_MANIFEST}; }}")
    return proc, host


def run_pulls(client, host, script_path, seconds, clients) -> dict:
    address, port = host.split(":")
    done = subprocess.run([client, address, port, str(seconds), str(clients), script_path],
                          capture_output=True, text=True, timeout=seconds + 60, check=True)
    result = dict(pair.split("=") for pair in done.stdout.split())
    result = {k: float(v) for k, v in result.items()}
    result["pulls_s"] = result["pulls"] / result["seconds"]
    return result


def counted(registry_url) -> float:
    """Requests for manifests and blobs in the registry's /metrics: those it
    answered and those nginx reported answering from its cache."""
    text = requests.get(f"{registry_url}/metrics", timeout=10).text
    return sum(float(line.rsplit(None, 1)[1]) for line in text.splitlines()
               if line.startswith("registry_http_requests_total{")
               and ('route="registry.blobs"' in line or 'route="registry.manifests"' in line))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    need("nginx", "cc")

    with servers("registry-bench-pulls-", keep=args.keep) as (workdir, stack):
        os.chmod(workdir, 0o755)
        client = compile_client(workdir)
        storage = os.path.join(workdir, "storage")
        direct = registry(os.path.join(workdir, "direct"), STORAGE_PATH=storage, NIX_TIMEOUT="600")
        stack.append(direct.start(timeout=60))
        images = {}
        for kind, name in IMAGES.items():
            r = requests.get(f"{direct.url}/v2/{name}/manifests/latest",
                             headers={"Accept": OCI_MANIFEST}, timeout=600)
            r.raise_for_status()
            images[name] = (r.content, r.json())
            print(f"{kind}: {name}, {len(r.json()['layers'])} layers, "
                  f"{sum(l['size'] for l in r.json()['layers']) / 1e6:.1f} MB")
        reports = os.path.join(workdir, "front-reports")  # as deploy/nginx.conf writes them
        accel = registry(os.path.join(workdir, "accel"), STORAGE_PATH=storage,
                         NIXERY_BLOB_ACCEL=ACCEL, NIXERY_FRONT_REPORTS=reports)
        stack.append(accel.start(timeout=60))
        proc, front_host = front(workdir, accel.host, storage, reports=reports)
        stack.append(proc)
        proc, static_host = static_nginx(workdir, storage, images)
        stack.append(proc)
        targets = {"direct": direct.host, "nginx front": front_host, "static nginx": static_host}

        scripts = {}
        for name, (_, manifest) in images.items():
            path = os.path.join(workdir, f"pull-{name.replace('/', '_')}.txt")
            with open(path, "w") as f:
                f.write("\n".join(pull_script(name, manifest)) + "\n")
            scripts[name] = path
            # every target answers every request of the pull
            for label, host in targets.items():
                check = run_pulls(client, host, path, 0.5, 1)
                if check["errors"] or not check["pulls"]:
                    sys.exit(f"{label} does not serve a whole pull of {name}: {check}")

        figures = {(n, t): [] for n in images for t in targets}
        time.sleep(3)  # the reports of the checks above are in
        before = counted(accel.url)
        order = list(targets)
        for round_ in range(args.rounds):
            for name in images:
                for label in order:
                    figures[name, label].append(
                        run_pulls(client, targets[label], scripts[name], args.seconds, args.clients))
            order = order[1:] + order[:1]

        missed = []
        print(f"\nwhole cached pulls, {args.clients} clients, {args.rounds} rounds of "
              f"{args.seconds:g} s (median pulls/s; ratio: median of per-round ratios)")
        for name in images:
            static = figures[name, "static nginx"]
            for label in targets:
                runs = figures[name, label]
                line = (f"  {name:16} {label:13} {median([r['pulls_s'] for r in runs]):8.1f} pulls/s"
                        f"  p50 {median([r['p50_ms'] for r in runs]):6.1f} ms"
                        f"  p99 {median([r['p99_ms'] for r in runs]):6.1f} ms")
                if label != "static nginx":
                    ratio = median([r["pulls_s"] / s["pulls_s"] for r, s in zip(runs, static)])
                    target = DIRECT_TARGET if label == "direct" else FRONT_TARGET
                    verdict = "ok" if ratio >= target else "MISSED"
                    line += f"  {ratio:.2f}x static (target {target}x) {verdict}"
                    if ratio < target:
                        missed.append(f"{name} {label}")
                print(line)
            front_runs, direct_runs = figures[name, "nginx front"], figures[name, "direct"]
            over_direct = median([f["pulls_s"] / d["pulls_s"]
                                  for f, d in zip(front_runs, direct_runs)])
            # no target: with answers given again (app/http/replay.py) direct
            # is near the static ceiling itself
            print(f"  {name:16} nginx front / direct {over_direct:.2f}x")
        print(json.dumps({f"{n}|{t}": [round(r["pulls_s"], 1) for r in v]
                          for (n, t), v in figures.items()}))
        # the front measured is the shipped one: every answer is counted,
        # nginx's from its cache by its reports (a second or two late)
        sent = sum(r["requests"] for n in images for r in figures[n, "nginx front"])
        end = time.monotonic() + 15
        while (seen := counted(accel.url) - before) < sent and time.monotonic() < end:
            time.sleep(0.5)
        print(f"nginx front: {seen:.0f} of {sent:.0f} answers counted in the registry's /metrics")
        if seen < sent:
            missed.append("front reports")
        if missed:
            print("missed: " + ", ".join(missed))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
