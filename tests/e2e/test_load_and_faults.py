"""Bursts, killed workers, full disks and corrupt files against a real server."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from builders.image.manifest import DOCKER_MANIFEST
from tests.conftest import package_set
from tests.e2e.test_api import _leftover_builders, error_of
from tests.e2e.test_clients import in_root, skopeo_copy, unpack
from tests.server import Server


def workers_of(server):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(server.proc.pid)],
                         capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def kill_workers(server):
    for pid in workers_of(server):
        os.kill(pid, signal.SIGKILL)


def wait_for_log(server, text, timeout=60, after=0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if text in server.read_log()[after:]:
            return
        time.sleep(0.01)
    pytest.fail(f"{text!r} never appeared in the server log")


def wait_ready(server, timeout=30):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if requests.get(server.url + "/v2/", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)


def in_background(url, timeout):
    """A pull whose client may see its worker die: its outcome is not the point."""
    def pull():
        try:
            requests.get(url, timeout=timeout)
        except requests.RequestException:
            pass
    thread = threading.Thread(target=pull, daemon=True)
    thread.start()
    return thread


def stored_blobs_match_their_digests(storage_root):
    layers = os.path.join(storage_root, "layers")
    for name in (os.listdir(layers) if os.path.isdir(layers) else []):
        with open(os.path.join(layers, name), "rb") as f:
            assert "sha256:" + hashlib.sha256(f.read()).hexdigest() == name, name
    return True


@pytest.fixture
def unbuilt_pkgs(tmp_path):
    """The package set with the sleepy packages changed, so Nix has to build
    them (and take its time) in this run, whatever the store holds."""
    nonce = os.urandom(8).hex()
    return package_set(tmp_path / "pkgs", [("sleep 2\n", f"sleep 2; echo {nonce}\n")])


@pytest.fixture
def fresh_server(tmp_path, unbuilt_pkgs):
    servers = []

    def start(**env):
        env.setdefault("NIXERY_PKGS_PATH", unbuilt_pkgs)
        srv = Server(str(tmp_path / f"srv{len(servers)}"), **env)
        servers.append(srv.start())
        return srv
    yield start
    for srv in servers:
        srv.stop()


def test_32_simultaneous_pulls_of_one_new_image_run_nix_once(fresh_server):
    srv = fresh_server()
    url = f"{srv.url}/v2/sleepy/hello/manifests/latest"
    barrier = threading.Barrier(32)

    def pull(_):
        barrier.wait()
        return requests.get(url, headers={"Accept": DOCKER_MANIFEST}, timeout=300)
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(pull, range(32)))
    assert [r.status_code for r in answers] == [200] * 32
    assert len({r.content for r in answers}) == 1
    log = srv.read_log()
    assert log.count("builders.jobs.builds: building ") == 1
    assert srv.builds() == 1


def test_32_pulls_of_8_images_get_the_right_images(fresh_server):
    srv = fresh_server()
    names = ["hello", "git", "htop", "curl", "nano", "langpackages.foo", "langpackages.bar",
             "git/htop"]

    def pull(name):
        return name, requests.get(f"{srv.url}/v2/{name}/manifests/latest", timeout=300)
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(pull, names * 4))
    assert all(r.status_code == 200 for _, r in answers), [r.text for _, r in answers if r.status_code != 200]
    digests = {}
    for name, r in answers:
        digests.setdefault(name, set()).add(r.headers["Docker-Content-Digest"])
    assert all(len(d) == 1 for d in digests.values())
    assert len({next(iter(d)) for d in digests.values()}) == len(names)
    assert srv.builds() == len(names)
    # each image holds its own package: its symlink layer links it
    for name in names:
        manifest = requests.get(f"{srv.url}/v2/{name}/manifests/latest").json()
        last = manifest["layers"][-1]["digest"]
        blob = requests.get(f"{srv.url}/v2/{name}/blobs/{last}").content
        import gzip
        import io
        import tarfile
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
            targets = " ".join(m.linkname for m in tar.getmembers() if m.issym())
        for package in name.split("/"):
            assert package.split(".")[-1] in targets


def test_builds_past_the_limit_get_429_with_retry_after(fresh_server):
    srv = fresh_server(NIXERY_MAX_BUILDS="1", NIXERY_BUILD_QUEUE_TIMEOUT="1", NIX_TIMEOUT="6")
    hog = in_background(f"{srv.url}/v2/slow/manifests/latest", 60)
    wait_for_log(srv, "building slow")
    r = requests.get(f"{srv.url}/v2/hello/manifests/latest", timeout=60)
    assert r.status_code == 429
    assert error_of(r)["code"] == "TOOMANYREQUESTS"
    assert int(r.headers["Retry-After"]) > 0
    assert "NIXERY_MAX_BUILDS" in error_of(r)["message"]
    hog.join()
    assert requests.get(f"{srv.url}/v2/hello/manifests/latest", timeout=60).status_code == 200


def test_disconnected_client_leaves_a_cached_build(fresh_server):
    srv = fresh_server()
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(f"{srv.url}/v2/sleepy-too/manifests/latest", timeout=0.5)
    wait_for_log(srv, "builders.jobs.builds: built sleepy-too")
    r = requests.get(f"{srv.url}/v2/sleepy-too/manifests/latest", timeout=60)
    assert r.status_code == 200
    assert srv.builds() == 1


def test_worker_killed_mid_build_leaves_nothing_running_or_blocking(fresh_server):
    srv = fresh_server(NIX_TIMEOUT="3")
    in_background(f"{srv.url}/v2/slow/manifests/latest", 30)
    wait_for_log(srv, "building slow")
    time.sleep(0.5)
    assert _leftover_builders()
    kill_workers(srv)
    # the deadline holds without the worker: 3s, plus the guard's grace
    time.sleep(3 + 5 + 2)
    assert _leftover_builders() == []
    wait_ready(srv)
    r = requests.get(f"{srv.url}/v2/hello/manifests/latest", timeout=60)
    assert r.status_code == 200


def test_worker_killed_mid_layer_then_pull_again(fresh_server, tmp_path):
    srv = fresh_server()
    in_background(f"{srv.url}/v2/bigfile/manifests/latest", 120)
    wait_for_log(srv, "building bigfile")
    start = len(srv.read_log())
    wait_for_log(srv, "making layer", after=start)
    kill_workers(srv)
    wait_ready(srv)
    storage = os.path.join(srv.workdir, "storage")
    assert stored_blobs_match_their_digests(storage)
    skopeo_copy(srv, "bigfile", tmp_path / "oci")
    rootfs = unpack(tmp_path / "oci", tmp_path / "bundle")
    big = rootfs / os.readlink(rootfs / "share" / "big").lstrip("/")
    assert big.stat().st_size == 120_000_000
    assert stored_blobs_match_their_digests(storage)


def test_truncated_blob_is_never_served_and_is_made_again(fresh_server, tmp_path):
    srv = fresh_server()
    manifest = requests.get(f"{srv.url}/v2/shell/hello/manifests/latest").json()
    storage = os.path.join(srv.workdir, "storage")
    biggest = max(manifest["layers"], key=lambda l: l["size"])
    for ref in (biggest, manifest["config"]):
        path = os.path.join(storage, "layers", ref["digest"])
        with open(path, "r+b") as f:
            f.truncate(ref["size"] // 2)
    skopeo_copy(srv, "shell/hello", tmp_path / "oci")
    rootfs = unpack(tmp_path / "oci", tmp_path / "bundle")
    assert in_root(rootfs, "hello") == "Hello, world!\n"
    assert stored_blobs_match_their_digests(storage)
    assert srv.read_log().count("restored blob") == 2


def test_corrupt_blob_that_cannot_be_made_again_is_reported(fresh_server):
    srv = fresh_server()
    manifest = requests.get(f"{srv.url}/v2/hello/manifests/latest").json()
    storage = os.path.join(srv.workdir, "storage")
    layer = manifest["layers"][0]
    os.unlink(os.path.join(storage, "blobsources", layer["digest"]))
    with open(os.path.join(storage, "layers", layer["digest"]), "r+b") as f:
        f.seek(100)
        f.write(b"\0" * 16)
    r = requests.get(f"{srv.url}/v2/hello/blobs/{layer['digest']}")
    assert r.status_code == 404
    assert error_of(r)["code"] == "BLOB_UNKNOWN" and "corrupt" in error_of(r)["message"]


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs for the disk-full test: {done.stderr}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


def test_full_disk_is_503_and_cached_images_keep_serving(fresh_server, small_disk, tmp_path):
    srv = fresh_server(STORAGE_PATH=str(small_disk / "storage"),
                       NIXERY_STATE_PATH=str(tmp_path / "state"))
    assert requests.get(f"{srv.url}/v2/hello/manifests/latest").status_code == 200
    r = requests.get(f"{srv.url}/v2/bigfile/manifests/latest", timeout=120)
    assert r.status_code == 503
    err = error_of(r)
    assert err["code"] == "STORAGE_UNAVAILABLE" and "storage" in err["message"]
    assert os.listdir(small_disk / "storage" / ".tmp") == []
    skopeo_copy(srv, "hello", tmp_path / "oci")
    assert in_root(unpack(tmp_path / "oci", tmp_path / "bundle"), "hello") == "Hello, world!\n"
