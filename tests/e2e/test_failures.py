"""Failures that heal, seen through a real gunicorn server and real clients:
a build the machine stopped is no verdict on the image, and a pull a
moment later builds it."""
from __future__ import annotations

import json
import os
import signal
import sys
import time

import requests

from builders import process
from builders.jobs.failures import RECHECK_SECONDS
from tests.conftest import PKGS, ROOT, drowsy_set, killed_once_set
from tests.e2e.conftest import run
from tests.e2e.test_clients import in_root, skopeo_copy, unpack
from tests.e2e.test_operators import samples
from tests.server import Server


def test_an_image_whose_builder_was_killed_pulls_a_moment_later(tmp_path):
    pkgs, marker = killed_once_set(tmp_path / "pkgs")
    srv = Server(str(tmp_path / "srv"), NIXERY_PKGS_PATH=pkgs, NIX_TIMEOUT="120").start()
    try:
        # the builder kills itself with SIGKILL, as the out-of-memory killer would
        r = requests.get(f"{srv.url}/v2/killed-once/manifests/latest", timeout=120)
        killed_at = time.monotonic()
        assert r.status_code == 503, r.text
        error = r.json()["errors"][0]
        assert error["code"] == "BUILD_INTERRUPTED" and error["detail"]["cause"] == "signal"
        assert "killed by signal 9 (Killed)" in error["message"]
        assert r.headers["Retry-After"] == "10"
        # logged and counted apart from the image's own failures
        assert "was stopped by the machine (signal), which is no verdict on the image" in \
            srv.read_log()
        counted = samples(srv, "registry_build_failures_total")
        assert counted == {(("cause", "signal"), ("kind", "machine")): 1.0}
        page = requests.get(f"{srv.url}/builds/killed-once:latest", timeout=10).text
        assert 'id="status">stopped by the machine, not by the image: pull again<' in page
        # within a minute, the same image pulls: Nix builds it again
        time.sleep(int(r.headers["Retry-After"]) + 1)
        skopeo_copy(srv, "killed-once", tmp_path / "oci")
        assert time.monotonic() - killed_at < 60
        rootfs = unpack(tmp_path / "oci", tmp_path / "bundle")
        assert in_root(rootfs, "killed-once") == "built on the second try\n"
        assert srv.read_log().count("builders.jobs.builds: building killed-once for") == 2
    finally:
        srv.stop()
        os.unlink(marker)


def flask(server, *args):
    """The operator's command, where the server's environment is set."""
    return run([os.path.join(os.path.dirname(sys.executable), "flask"), "--app", "app", *args],
               cwd=ROOT, env=server.env)


def test_an_operator_clears_a_failure_and_the_next_pull_runs_nix(tmp_path):
    srv = Server(str(tmp_path / "srv"), NIXERY_PKGS_PATH=str(PKGS), NIX_TIMEOUT="120").start()

    def builds():
        return srv.read_log().count("builders.jobs.builds: building broken for")
    try:
        for _ in range(2):
            r = requests.get(f"{srv.url}/v2/broken/manifests/latest", timeout=120)
            assert r.status_code == 422
        assert builds() == 1  # remembered: the second pull ran no Nix
        listed = flask(srv, "failures", "list").stdout
        assert "  verdict (build-error)  broken:latest (x86_64-linux)  key " in listed
        assert listed.rstrip().endswith("package broken failed to build (broken-1.0 with exit "
                                        "code 1)")
        cleared = flask(srv, "failures", "clear", "broken:latest").stdout
        assert cleared.startswith("cleared broken:latest (x86_64-linux)")
        cleared_at = time.monotonic()
        while builds() == 1:
            assert time.monotonic() - cleared_at < RECHECK_SECONDS + 10, \
                "the server kept answering the cleared failure"
            assert requests.get(f"{srv.url}/v2/broken/manifests/latest",
                                timeout=120).status_code == 422
            time.sleep(0.5)
        assert flask(srv, "failures", "list").stdout.count("broken:latest") == 1
    finally:
        srv.stop()


def test_a_build_whose_worker_died_is_taken_over_at_once_and_leaves_no_orphan(tmp_path):
    lease = 600  # the next build must not wait for it
    srv = Server(str(tmp_path / "srv"), NIXERY_PKGS_PATH=drowsy_set(tmp_path / "pkgs", 10),
                 NIX_TIMEOUT="300", NIXERY_PULL_WAIT="1", NIXERY_BUILD_LEASE=str(lease)).start()
    url = f"{srv.url}/v2/drowsy/manifests/latest"
    try:
        assert requests.get(url, timeout=60).status_code == 429
        # the worker that builds it, as its claim names it, and its Nix processes
        claims = tmp_path / "srv" / "storage" / "claims"
        end = time.monotonic() + 60
        while True:
            held = [json.loads(p.read_text()) for p in claims.glob("*")] if claims.exists() else []
            worker = held[0]["pid"] if held else None
            building = worker and [p for p in process.descendants(worker)
                                   if "nix-store" in _cmdline(p)]
            if building:
                break
            assert time.monotonic() < end, "the build did not start"
            time.sleep(0.2)
        nix = process.descendants(worker)
        os.kill(worker, signal.SIGKILL)
        killed_at = time.monotonic()
        # its Nix processes die with it: nothing keeps building for nobody
        while [p for p in nix if process.start_time(p) is not None]:
            assert time.monotonic() - killed_at < 15, "Nix outlived its worker"
            time.sleep(0.2)
        # the next pull's build takes the dead worker's claim over at once
        while requests.get(url, timeout=60).status_code != 200:
            assert time.monotonic() - killed_at < 120
            time.sleep(1)
        assert time.monotonic() - killed_at < lease
        assert f"its process (pid {worker} on this machine) is gone" in srv.read_log()
    finally:
        srv.stop()


def _cmdline(pid) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
