"""Peak memory of a registry worker while it builds a 1 GB image.

Starts the registry as `make run` does (gunicorn, gthread workers) on a free
port of 127.0.0.1, serving the test package set into fresh storage, pulls
the manifest of `bench.huge` (about 1 GB: large files and tens of thousands
of small ones), and reads each worker's peak resident set (VmHWM) before
and after.  Target: under 150 MB.

    NIX_CONFIG='substituters =' .venv/bin/python bench/memory.py
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKGS = os.path.join(ROOT, "tests", "pkgs")
TARGET_MB = 150


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry))
    return kids


def peak_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def get(url, timeout):
    req = urllib.request.Request(url, headers={
        "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="bench.huge")
    args = parser.parse_args()
    env = dict(os.environ)
    env.setdefault("NIX_CONFIG", "substituters =")
    # build first, so the worker's time is the layers' time
    out = subprocess.run(["nix-build", PKGS, "-A", args.image, "--no-out-link"], env=env,
                         check=True, capture_output=True, text=True).stdout.strip()
    closure = subprocess.run(["nix", "--extra-experimental-features", "nix-command",
                              "path-info", "--json", "--recursive", out], env=env, check=True,
                             capture_output=True, text=True).stdout
    nar = sum(p["narSize"] for p in (json.loads(closure) if closure.startswith("[")
                                     else json.loads(closure).values()))
    port = free_port()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_SCRATCH")) as storage:
        env.update(PORT=str(port), LISTEN_ADDRESS="127.0.0.1", NIXERY_PKGS_PATH=PKGS,
                   STORAGE_PATH=storage, NIX_TIMEOUT="600", LOG_LEVEL="WARNING")
        master = subprocess.Popen([os.path.join(ROOT, ".venv", "bin", "gunicorn"),
                                   "-c", "gunicorn.conf.py"], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    get(base + "/v2/", 2)
                    break
                except OSError:
                    time.sleep(0.1)
            workers = children(master.pid)
            idle = {pid: peak_mb(pid) for pid in workers}
            start = time.perf_counter()
            manifest = json.loads(get(f"{base}/v2/{args.image}/manifests/latest", 900))
            seconds = time.perf_counter() - start
            peak = {pid: peak_mb(pid) for pid in workers}
        finally:
            master.send_signal(signal.SIGTERM)
            master.wait(60)
    size = sum(layer["size"] for layer in manifest["layers"])
    builder = max(peak, key=lambda pid: peak[pid] - idle[pid])
    print(f"image {args.image}: closure {nar / 1e6:.0f} MB (NAR), {len(manifest['layers'])} "
          f"layers, {size / 1e6:.0f} MB gzipped, built in {seconds:.1f} s")
    print(f"worker peak RSS: {peak[builder]:.0f} MB while building "
          f"(idle worker: {idle[builder]:.0f} MB); target < {TARGET_MB} MB: "
          f"{'met' if peak[builder] < TARGET_MB else 'NOT met'}")


if __name__ == "__main__":
    main()
