"""Builds as jobs, seen by real clients: a pull waits NIXERY_PULL_WAIT, the
clients that retry on a 429 pull unattended, docker says what is going on,
and outcomes are remembered so a client asking twice costs one build."""
from __future__ import annotations

import os
import signal
import time

import pytest
import requests

from tests.conftest import drowsy_set
from tests.e2e.conftest import registry, run
from tests.e2e.test_clients import in_root, skopeo_copy, unpack
from tests.server import Server

BUILD_SECONDS = 25


@pytest.fixture
def drowsy_server(tmp_path):
    """A registry that waits 5 s for a job, on a package set whose `drowsy`
    takes 25 s to build and was never built before."""
    pkgs = drowsy_set(tmp_path / "pkgs", BUILD_SECONDS)
    srv = Server(str(tmp_path / "srv"), NIXERY_PKGS_PATH=pkgs, NIX_TIMEOUT="300",
                 NIXERY_PULL_WAIT="5").start()
    yield srv
    srv.stop()


def nix_builds(server, name):
    """How many times the server ran a build of the image `name` (its
    packages as the log names them)."""
    return server.read_log().count(f"builders.jobs.builds: building {name} for")


def test_skopeo_pulls_a_long_build_unattended(drowsy_server, tmp_path):
    started = time.monotonic()
    skopeo_copy(drowsy_server, "drowsy", tmp_path / "oci")
    assert time.monotonic() - started > BUILD_SECONDS  # it did wait for the build
    assert in_root(unpack(tmp_path / "oci", tmp_path / "bundle"), "drowsy") == "awake\n"
    assert nix_builds(drowsy_server, "drowsy") == 1
    # the client was told to come back while it built
    assert " 429 " in drowsy_server.read_log()


def test_podman_pulls_a_long_build_unattended(drowsy_server, podman):
    run(podman + ["pull", "--tls-verify=false", f"{drowsy_server.host}/drowsy:latest"])
    assert nix_builds(drowsy_server, "drowsy") == 1
    assert " 429 " in drowsy_server.read_log()


def test_docker_says_it_is_still_building_then_pulls(drowsy_server, dockerd):
    image = f"{drowsy_server.host}/drowsy:latest"
    first = run(["docker", "pull", image], check=False, env=dockerd.env)
    print("docker:", first.returncode, first.stderr)
    assert first.returncode != 0
    assert "drowsy:latest is still building" in first.stderr
    assert f"progress at http://{drowsy_server.host}/builds/drowsy:latest" in first.stderr
    wait_built(drowsy_server, "drowsy")
    run(["docker", "pull", image], env=dockerd.env)
    assert nix_builds(drowsy_server, "drowsy") == 1


def test_what_ctr_does_with_a_long_build(drowsy_server, containerd):
    """containerd 1.6 asks with HEAD first and retries a 429 at once, five
    times in all: it gives up after about 5 x NIXERY_PULL_WAIT, showing only
    the status; a later pull gets the image the job went on to build."""
    ctr = ["ctr", "--address", containerd.socket]
    image = f"{drowsy_server.host}/drowsy:latest"
    first = run(ctr + ["images", "pull", "--plain-http", image], check=False)
    print("ctr:", first.returncode, first.stderr[-2000:])
    if first.returncode != 0:
        assert "429" in first.stderr or "Too Many Requests" in first.stderr, first.stderr
        wait_built(drowsy_server, "drowsy")
        run(ctr + ["images", "pull", "--plain-http", image])
    assert nix_builds(drowsy_server, "drowsy") == 1


def wait_built(server, name, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = requests.head(f"{server.url}/v2/{name}/manifests/latest")
        if r.status_code == 200:
            return
        assert r.status_code == 429, r.status_code
    pytest.fail(f"{name} was not built within {timeout}s")


@pytest.fixture(scope="module")
def short_server(tmp_path_factory):
    """A registry whose NIX_TIMEOUT is shorter than its pull wait."""
    yield from registry(tmp_path_factory, "short", NIX_TIMEOUT="10", NIXERY_PULL_WAIT="30")


def test_docker_timeout_costs_one_build_and_names_nix_timeout(short_server, dockerd):
    done = run(["docker", "pull", f"{short_server.host}/slow:latest"], check=False,
               env=dockerd.env)
    print("docker:", done.returncode, done.stderr)
    assert done.returncode != 0
    assert "NIX_TIMEOUT" in done.stderr and "10s limit" in done.stderr
    # docker asked with HEAD, then GET: one build answered both
    assert nix_builds(short_server, "slow") == 1


def test_three_pulls_of_a_failing_package_run_nix_once(short_server, tmp_path):
    for _ in range(3):
        done = skopeo_copy(short_server, "broken", tmp_path / "oci", check=False)
        print("skopeo:", done.returncode, done.stderr)
        assert done.returncode != 0 and "fails to build on purpose" not in done.stdout
        assert "package broken failed to build" in done.stderr
    assert nix_builds(short_server, "broken") == 1


def test_a_restart_waits_for_the_build_jobs_of_its_workers(tmp_path):
    pkgs = drowsy_set(tmp_path / "pkgs", 8)
    srv = Server(str(tmp_path / "srv"), NIXERY_PKGS_PATH=pkgs, NIX_TIMEOUT="120",
                 NIXERY_PULL_WAIT="1").start()
    try:
        assert requests.get(f"{srv.url}/v2/drowsy/manifests/latest").status_code == 429
        os.kill(srv.proc.pid, signal.SIGHUP)  # new workers; the old ones stop gracefully
        wait_built(srv, "drowsy")
        assert "waits for 1 build job(s) before it exits: drowsy" in srv.read_log()
        # the build the old worker started finished; the new workers ran none
        assert nix_builds(srv, "drowsy") == 1
        assert srv.read_log().count("builders.jobs.builds: built drowsy") == 1
    finally:
        srv.stop()


def test_what_ctr_prints_for_a_package_that_fails(short_server, containerd):
    """containerd starts with a HEAD, whose answer has no body, and shows
    only the status line of a 4xx other than 404: it carries the message."""
    done = run(["ctr", "--address", containerd.socket, "images", "pull", "--plain-http",
                f"{short_server.host}/broken:latest"], check=False)
    print("ctr:", done.returncode, done.stderr[-2000:])
    assert done.returncode != 0
    assert "422 package broken failed to build (broken-1.0 with exit code 1)" in done.stderr
