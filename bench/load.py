"""A mixed load run against our registry on 127.0.0.1.

64 clients (wrk connections) for 60 s ask for a mix of:
- cached pulls: manifest (by tag, and by digest), config and layers of
  images built before the run;
- new images: combinations of the offline package set's packages that this
  registry has not built yet, one after another, every client asking for
  the current one, so each new image starts as a burst;
- unknown packages: a few names the package set does not have, asked again
  and again, as a fleet with a typo in its config would;
- bad input: names, tags and digests that break the grammars, `..`,
  unicode, control characters, huge headers, write and unknown methods.

It prints requests/s, p50/p99 latency, the status counts (5xx: target 0),
Nix runs against distinct images requested (target: equal), and the peak
memory (RSS) of each gunicorn worker, sampled from /proc during the run.

    ./.venv/bin/python -m bench.load [--seconds 60] [--connections 64]
"""
from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import tempfile
import time
from collections import Counter, defaultdict

import requests

from .common import (DOCKER_MANIFEST, OCI_MANIFEST, HERE, RssSampler, children, ms,
                     need, registry, wrk)

# Packages of tests/pkgs that build quickly and cleanly, by registry name.
BUILDABLE = ["hello", "git", "htop", "curl", "nano", "moreutils", "coreutils", "cacert",
             "iana-etc", "bashinteractive", "sdl2", "1password", "langpackages.foo",
             "langpackages.bar", "filetypes", "libshared"]
CACHED = ["shell/hello", "git/htop", "curl"]
UNKNOWN = ["nosuchpkg", "gti", "htop/curll", "hello/nosuchpkg"]
# The access log line the server writes for every request the app answers
# (app/logs.py): client user "METHOD path" status bytes duration_ms "ms" ...
ACCESS_RE = re.compile(r'^\S+ \S+ "(\S+) (.*?)" (\d{3}) \S+ ([\d.]+)ms ', re.M)
BUILDING, BUILT = "builders.jobs.builds: building ", "builders.jobs.builds: built "
BUILDING_RE = re.compile(r"builders\.jobs\.builds: building (\S+) for ")


def lua(value) -> str:
    """A Lua literal for plain data; strings byte by byte, so any byte
    (control characters, UTF-8) reaches wrk exactly."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        out = []
        for b in value.encode("utf-8"):
            c = chr(b)
            out.append(c if 0x20 <= b < 0x7f and c not in '"\\' else f"\\{b:03d}")
        return '"' + "".join(out) + '"'
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua(k)}] = {lua(v)}" for k, v in value.items()) + "}"
    return "{" + ", ".join(lua(v) for v in value) + "}"


def new_images(count, seed, taken):
    """`count` distinct images (sets of packages) not in `taken`."""
    rng = random.Random(seed)
    found = []
    seen = {tuple(sorted(n.split("/"))) for n in taken}
    while len(found) < count:
        image = tuple(sorted(rng.sample(BUILDABLE, rng.choice((2, 3)))))
        if image not in seen:
            seen.add(image)
            found.append("/".join(image))
    return found


def bad_requests(blob):
    long_name = "/".join(["a" * 60] * 5)  # 304 characters, over the 255 limit
    return [
        {"path": "/v2/Hello/manifests/latest"},
        {"path": "/v2/hello/manifests/" + "t" * 200},
        {"path": "/v2/hello/manifests/.."},
        {"path": "/v2/%2e%2e/%2e%2e/manifests/latest"},
        {"path": "/v2/hello//git/manifests/latest"},
        {"path": "/v2/h%C3%A9llo/manifests/latest"},
        {"path": "/v2/héllo/manifests/latest"},  # raw UTF-8 in the request line
        {"path": "/v2/hello/manifests/lat%00est%0d%0aX-Injected:%201"},
        {"path": "/v2/hel\x01lo/manifests/latest"},  # a raw control character
        {"path": f"/v2/{long_name}/manifests/latest"},
        {"path": "/v2/hello/blobs/sha256:abc"},
        {"path": "/v2/hello/blobs/md5:" + "0" * 32},
        {"path": "/v2/hello/blobs/sha256:" + "0" * 64},
        {"path": "/v2/hello/manifests/sha256:" + "f" * 64},
        {"path": "/v2/hello/tags/list?n=-5"},
        {"path": "/v2/bench/range/blobs/" + blob, "headers": {"Range": "bytes=999999999-"}},
        {"path": "/v2/hello/manifests/latest", "headers": {"X-Bench-Pad": "x" * 9000}},
        {"method": "PUT", "path": "/v2/hello/manifests/latest"},
        {"method": "DELETE", "path": "/v2/shell/hello/manifests/latest"},
        {"method": "POST", "path": "/v2/hello/blobs/uploads/"},
        {"method": "BREW", "path": "/v2/"},
    ]


def prepare(server, seed, n_new):
    """Build the cached images, and write down every request of the mix."""
    cached = []
    blob = None
    for i, name in enumerate(CACHED):
        media_type = (DOCKER_MANIFEST, OCI_MANIFEST)[i % 2]
        r = requests.get(f"{server.url}/v2/{name}/manifests/latest",
                         headers={"Accept": media_type}, timeout=300)
        r.raise_for_status()
        manifest = r.json()
        # By tag, then (OCI) by digest as containerd does after resolving the
        # tag.  No HEAD: wrk expects a body after a HEAD answer's
        # Content-Length and hangs the connection (the tests cover HEAD).
        cached.append({"path": f"/v2/{name}/manifests/latest",
                       "headers": {"Accept": media_type}})
        if media_type == OCI_MANIFEST:
            cached.append({"path": f"/v2/{name}/manifests/{r.headers['Docker-Content-Digest']}",
                           "headers": {"Accept": media_type}})
        for desc in [manifest["config"], *manifest["layers"]]:
            cached.append({"path": f"/v2/{name}/blobs/{desc['digest']}"})
        blob = blob or manifest["layers"][0]["digest"]
    new = [{"path": f"/v2/{name}/manifests/latest", "headers": {"Accept": DOCKER_MANIFEST}}
           for name in new_images(n_new, seed, CACHED)]
    unknown = [{"path": f"/v2/{name}/manifests/latest", "headers": {"Accept": DOCKER_MANIFEST}}
               for name in UNKNOWN]
    return {"cached": cached, "new": new, "unknown": unknown, "bad": bad_requests(blob)}


def deck(shares, seed):
    """The order of categories each client thread cycles through."""
    cards = [kind for kind, n in shares.items() for _ in range(n)]
    random.Random(seed).shuffle(cards)
    return cards


def parse_mix(text):
    shares = {}
    for part in text.split(","):
        kind, _, n = part.partition("=")
        if kind not in ("cached", "new", "unknown", "bad") or not n.isdigit():
            raise argparse.ArgumentTypeError(f"bad mix entry {part!r}")
        shares[kind] = int(n)
    return shares


def wait_quiet(server, quiet=3.0, timeout=120):
    """Let builds still running when the clients stopped finish and log."""
    end = time.monotonic() + timeout
    size, since = -1, time.monotonic()
    while time.monotonic() < end:
        now_size = os.path.getsize(server.log_path)
        if now_size != size:
            size, since = now_size, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.2)


def percentile(values, p):
    if not values:
        return 0
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--max-requests", type=int, default=1_000_000,
                    help="bound on responses per wrk thread, besides --seconds")
    ap.add_argument("--mix", type=parse_mix, default=parse_mix("cached=70,new=10,unknown=10,bad=10"),
                    help="shares of the categories (default cached=70,new=10,unknown=10,bad=10)")
    ap.add_argument("--new-period", type=float, default=2.0,
                    help="seconds all clients ask for one new image before the next")
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--keep", action="store_true", help="keep the work folder and logs")
    args = ap.parse_args(argv)
    need("wrk", "nix-instantiate")

    workdir = tempfile.mkdtemp(prefix="bench-load-")
    server = registry(os.path.join(workdir, "registry"))
    try:
        server.start()
        n_new = int(args.seconds / args.new_period) + 2
        plan = prepare(server, args.seed, n_new)
        plan_path = os.path.join(workdir, "plan.lua")
        with open(plan_path, "w") as f:
            f.write("return " + lua({**plan, "deck": deck(args.mix, args.seed),
                                     "new_period": args.new_period,
                                     "max_requests": args.max_requests}) + "\n")
        category = {(r.get("method", "GET"), r["path"]): kind
                    for kind in ("cached", "new", "unknown", "bad") for r in plan[kind]}
        new_names = {r["path"] for r in plan["new"]}

        offset = os.path.getsize(server.log_path)
        workers_before = set(children(server.proc.pid))
        load_before = os.getloadavg()[0]
        with RssSampler(server.proc.pid) as rss:
            result = wrk(f"{server.url}/v2/", connections=args.connections,
                         seconds=args.seconds, script=os.path.join(HERE, "load.lua"),
                         timeout_s=90, env=dict(os.environ, BENCH_PLAN=plan_path))
        load_after = os.getloadavg()[0]
        wait_quiet(server)
        with open(server.log_path, "rb") as f:
            f.seek(offset)
            log = f.read().decode("utf-8", "replace")
    finally:
        server.stop()

    statuses = Counter()
    for pair in filter(None, str(result["statuses"]).split(",")):
        status, n = pair.split(":")
        statuses[int(status)] += int(n)
    seconds = result["duration_us"] / 1e6
    five = sum(n for s, n in statuses.items() if s >= 500)

    by_kind = defaultdict(lambda: {"statuses": Counter(), "us": []})
    new_asked, unknown_asked = set(), set()
    for method, target, status, millis in ACCESS_RE.findall(log):
        kind = category.get((method, target), "bad")
        by_kind[kind]["statuses"][int(status)] += 1
        by_kind[kind]["us"].append(round(float(millis) * 1000))
        if kind == "new":
            new_asked.add(target)
        elif kind == "unknown":
            unknown_asked.add(target)
    nix_runs, built = log.count(BUILDING), log.count(BUILT)
    distinct = len(new_asked) + len(unknown_asked)
    # the log names the image by its resolved attribute paths; a run whose
    # image holds one of the unknown names is one of the unknown images
    missing = {part for name in UNKNOWN for part in name.split("/")} - set(BUILDABLE)
    runs_of = Counter("unknown" if missing & set(name.lower().split("/")) else "new"
                      for name in BUILDING_RE.findall(log))

    mix = ", ".join(f"{k} {v}" for k, v in args.mix.items())
    print(f"\nload run: wrk -t2 -c{args.connections} -d{args.seconds}s against gunicorn.conf.py "
          f"(gthread), mix {mix}; {os.cpu_count()} cores, load average "
          f"{load_before:.1f} before, {load_after:.1f} after")
    print(f"requests: {result['requests']} in {seconds:.1f} s = {result['rps']:.0f} req/s; "
          f"latency p50 {ms(result['p50_us'])}, p99 {ms(result['p99_us'])} (client side, all)")
    print("statuses: " + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())))
    print(f"5xx: {five} (target 0); socket errors: {result['socket_errors']}, "
          f"timeouts: {result['timeouts']}")
    print("per category, server side (access log; gunicorn's own 400s for malformed "
          "requests are not in it):")
    for kind in ("cached", "new", "unknown", "bad"):
        k = by_kind.get(kind)
        if not k:
            continue
        print(f"  {kind:8} {sum(k['statuses'].values()):7d} requests, p50 "
              f"{ms(percentile(k['us'], 50)):>9}, p99 {ms(percentile(k['us'], 99)):>9}; "
              + ", ".join(f"{s}: {n}" for s, n in sorted(k["statuses"].items())))
    verdict = "met" if nix_runs == distinct else "MISSED"
    print(f"Nix runs ('{BUILDING.strip()}' lines): {nix_runs}; images built ('built' lines): "
          f"{built}")
    print(f"distinct images requested: {distinct} = {len(new_asked)} new (of {len(new_names)} "
          f"planned) + {len(unknown_asked)} unknown; Nix runs == distinct: {verdict}")
    print(f"  new images: {runs_of['new']} Nix runs for {len(new_asked)} images; "
          f"unknown packages: {runs_of['unknown']} Nix runs for {len(unknown_asked)} images")
    new_i = [i for i in str(result.get("new_seen", "")).split(",") if i]
    print(f"  (the clients asked for {len(new_i)} new images)")
    workers = sorted(rss.peaks)
    restarted = len(set(workers) - workers_before)
    print(f"peak RSS per worker ({rss.samples} samples, every {rss.interval}s; "
          f"{restarted} workers started during the run):")
    for pid in workers:
        print(f"  worker {pid}: {rss.peaks[pid] / 1024:.1f} MiB sampled, "
              f"VmHWM {rss.hwm.get(pid, 0) / 1024:.1f} MiB")
    if args.keep:
        print(f"work folder kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if five == 0 and nix_runs == distinct else 1


if __name__ == "__main__":
    raise SystemExit(main())
