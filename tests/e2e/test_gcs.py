"""Two registry processes on one bucket of a real GCS emulator: the first
builds, the second serves the same image without Nix; real clients follow
the blob redirects to signed URLs on the emulator."""
from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import PKGS, drowsy_set
from tests.e2e.conftest import run
from tests.e2e.test_clients import in_root, skopeo_copy, unpack
from tests.server import Server

# lines of the access log (app/logs.py): client "METHOD path" status ...
BLOB_REDIRECT = re.compile(r'"GET /v2/\S+/blobs/sha256:[0-9a-f]{64}" 307 ')
BLOB_STREAMED = re.compile(r'"GET /v2/\S+/blobs/sha256:[0-9a-f]{64}" 20[06] ')


@pytest.fixture(scope="module")
def bucket(gcs_emulator):
    return gcs_emulator.create_bucket("e2e")


@pytest.fixture(scope="module")
def gcs_env(gcs_emulator, gcs_key, bucket):
    return dict(NIXERY_STORAGE_BACKEND="gcs", GCS_BUCKET=bucket,
                STORAGE_EMULATOR_HOST=gcs_emulator.url, GOOGLE_APPLICATION_CREDENTIALS=gcs_key,
                NIXERY_PKGS_PATH=str(PKGS), NIX_TIMEOUT="120")


@pytest.fixture(scope="module")
def first(tmp_path_factory, gcs_env):
    srv = Server(str(tmp_path_factory.mktemp("gcs-first")), **gcs_env).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def second(tmp_path_factory, gcs_env):
    srv = Server(str(tmp_path_factory.mktemp("gcs-second")), **gcs_env).start()
    yield srv
    srv.stop()


def objects(emulator, bucket):
    r = requests.get(f"{emulator.url}/storage/v1/b/{bucket}/o", timeout=10)
    r.raise_for_status()
    return [o["name"] for o in r.json().get("items", [])]


def test_skopeo_pulls_through_signed_redirects(first, tmp_path, gcs_emulator, bucket):
    skopeo_copy(first, "shell/hello", tmp_path / "oci")
    rootfs = unpack(tmp_path / "oci", tmp_path / "bundle")
    assert in_root(rootfs, "hello") == "Hello, world!\n"

    log = first.read_log()
    assert BLOB_REDIRECT.search(log), "skopeo fetched no blob through a redirect"
    assert not BLOB_STREAMED.search(log), "a blob was streamed instead of redirected"
    # everything the image needs lives in the bucket; this machine keeps
    # only its own state (locks, build history, metrics)
    stored = objects(gcs_emulator, bucket)
    assert any(name.startswith("manifests/") for name in stored)
    assert sum(name.startswith("layers/sha256:") for name in stored) >= 3
    local = os.path.join(first.workdir, "storage")
    assert os.listdir(local) == [".state"]


def test_second_instance_serves_without_building(first, second, podman):
    image = "shell/hello:latest"
    # built (or already built) by the first instance
    assert requests.get(f"{first.url}/v2/shell/hello/manifests/latest",
                        timeout=300).status_code == 200
    assert first.builds() == 1

    run(podman + ["pull", "--tls-verify=false", f"{second.host}/{image}"])
    out = run(podman + ["run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024",
                        "--ulimit", "nproc=1024:1024", f"{second.host}/{image}", "hello"]).stdout
    assert out == "Hello, world!\n"

    log = second.read_log()
    assert second.builds() == 0, "the second instance ran Nix"
    assert "found in storage" in log
    assert BLOB_REDIRECT.search(log) and not BLOB_STREAMED.search(log)


@pytest.fixture
def two_on_a_bucket(tmp_path, gcs_emulator, gcs_key):
    """Two instances on a new bucket, each with its own machine state, on a
    package set whose `drowsy` takes 8 s to build and was never built."""
    env = dict(NIXERY_STORAGE_BACKEND="gcs", GCS_BUCKET=gcs_emulator.create_bucket(),
               STORAGE_EMULATOR_HOST=gcs_emulator.url, GOOGLE_APPLICATION_CREDENTIALS=gcs_key,
               NIXERY_PKGS_PATH=drowsy_set(tmp_path / "pkgs", 8), NIX_TIMEOUT="120",
               NIXERY_PULL_WAIT="60", NIXERY_BUILD_LEASE="4")
    servers = [Server(str(tmp_path / name), **env).start() for name in ("one", "two")]
    yield servers
    for srv in servers:
        srv.stop()


def building(srv, name):
    return srv.read_log().count(f"builders.jobs.builds: building {name} for")


def pulled_at_once_built_once(servers, name="drowsy"):
    """Pull a new image from every instance at once: each gets the same
    manifest, and one of them built it."""
    with ThreadPoolExecutor(len(servers)) as pool:
        answers = list(pool.map(lambda srv: requests.get(
            f"{srv.url}/v2/{name}/manifests/latest", timeout=120), servers))
    assert [r.status_code for r in answers] == [200] * len(servers)
    assert len({r.content for r in answers}) == 1
    assert sum(building(srv, name) for srv in servers) == 1


def test_two_instances_pulled_at_once_build_a_new_image_once(two_on_a_bucket):
    pulled_at_once_built_once(two_on_a_bucket)


def test_the_build_of_an_instance_killed_mid_build_is_taken_over(two_on_a_bucket):
    one, two = two_on_a_bucket
    # a pull that gives up at once: one's job goes on building
    with pytest.raises(requests.Timeout):
        requests.get(f"{one.url}/v2/drowsy/manifests/latest", timeout=0.5)
    # one's job is building now; it dies with its claim held
    end = time.monotonic() + 30
    while building(one, "drowsy") == 0 and time.monotonic() < end:
        time.sleep(0.2)
    os.killpg(one.proc.pid, signal.SIGKILL)
    one.proc.wait()
    r = requests.get(f"{two.url}/v2/drowsy/manifests/latest", timeout=120)
    assert r.status_code == 200, r.text
    log = two.read_log()
    assert "taking over the claim of" in log and building(two, "drowsy") == 1
