"""Nix beyond one machine: a remote builder reached over ssh builds what
the registry asks for, and a binary cache the registry fills lets an
instance with an empty store substitute what another one built."""
from __future__ import annotations

import json
import os
import time

import pytest
import requests

from tests.conftest import PKGS, remote_set
from tests.e2e.test_clients import in_root, skopeo_copy, unpack
from tests.nixstore import PrivateStore, RemoteBuilder, keypair
from tests.server import Server

OCI = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture
def builder(tmp_path):
    b = RemoteBuilder(tmp_path / "builder")
    yield b
    b.stop()


def remote_env(builder):
    """A web instance that builds nothing itself: every build goes to `builder`."""
    return {"NIX_CONFIG": f"substituters =\nmax-jobs = 0\nbuilders = {builder.machine}\n",
            "NIX_SSHOPTS": builder.ssh_options}


def test_a_remote_builder_builds_what_the_registry_serves(builder, tmp_path):
    pkgs = remote_set(tmp_path / "pkgs")
    srv = Server(str(tmp_path / "registry"), NIXERY_PKGS_PATH=pkgs, NIX_TIMEOUT="120",
                 **remote_env(builder)).start()
    try:
        skopeo_copy(srv, "remote-only", tmp_path / "oci")
        rootfs = unpack(tmp_path / "oci", tmp_path / "bundle")
        assert in_root(rootfs, "remote-only") == "built by the remote builder\n"
        out = os.path.dirname(os.path.dirname(os.readlink(rootfs / "bin" / "remote-only")))
        # the builder's store has it: it was built there, and copied back
        assert builder.store.has(out) and os.path.exists(out)
        log = nix_logs(srv)
        assert f"on 'ssh://root@127.0.0.1'" in log and "remote-only-1.0.drv" in log
    finally:
        srv.stop()


def nix_logs(srv) -> str:
    """What Nix wrote in the server's builds (its build history's logs)."""
    logs = os.path.join(srv.env["STORAGE_PATH"], ".state", "history", "logs")
    texts = []
    for name in sorted(os.listdir(logs)):
        with open(os.path.join(logs, name), errors="replace") as f:
            texts.append(f.read())
    return "".join(texts)


def test_an_empty_store_substitutes_what_another_instance_built(tmp_path):
    secret, public = keypair(tmp_path, "registry-e2e-1")
    cache = tmp_path / "cache"
    first = Server(str(tmp_path / "first"), NIXERY_PKGS_PATH=str(PKGS), NIX_TIMEOUT="120",
                   NIXERY_NIX_CACHE=f"file://{cache}", NIXERY_NIX_CACHE_KEY=secret).start()
    try:
        assert requests.get(f"{first.url}/v2/shell/hello/manifests/latest",
                            headers={"Accept": OCI}, timeout=120).status_code == 200
        hello = first.log_line("copied ", timeout=60)
        assert "to the Nix binary cache" in hello
    finally:
        first.stop()
    narinfos = {p.name for p in cache.glob("*.narinfo")}
    assert narinfos

    store = PrivateStore(tmp_path / "empty-store")
    second = Server(str(tmp_path / "second"), wrap=store.wrap, NIXERY_PKGS_PATH=str(PKGS),
                    NIX_TIMEOUT="120",
                    NIX_CONFIG=f"substituters = file://{cache}\ntrusted-public-keys = {public}\n"
                               "build-users-group =\n").start()
    try:
        skopeo_copy(second, "hello", tmp_path / "oci")
        rootfs = unpack(tmp_path / "oci", tmp_path / "bundle")
        assert in_root(rootfs, "hello") == "Hello, world!\n"
        out = os.path.dirname(os.path.dirname(os.readlink(rootfs / "bin" / "hello")))
        assert store.has(out)
        # the store's database: substituted, signed by the first instance's key, not built here
        info = json.loads(store.run(["nix", "--extra-experimental-features", "nix-command",
                                     "path-info", "--json", out]).stdout)[0]
        assert any(sig.startswith("registry-e2e-1:") for sig in info.get("signatures", ()))
        assert not info.get("ultimate")
        log = nix_logs(second)
        assert f"copying path '{out}' from 'file://{cache}'" in log
        assert "building '" not in log
    finally:
        second.stop()
        store.remove()


def readyz(srv) -> dict:
    """/readyz with its details, as a caller on this machine sees it."""
    return requests.get(f"{srv.url}/readyz", timeout=60).json()


def test_a_cache_that_cannot_be_written_fails_no_pull(tmp_path):
    secret, _ = keypair(tmp_path, "registry-e2e-1")
    (tmp_path / "not-a-folder").write_text("")
    srv = Server(str(tmp_path / "registry"), NIXERY_PKGS_PATH=str(PKGS), NIX_TIMEOUT="120",
                 NIXERY_NIX_CACHE=f"file://{tmp_path}/not-a-folder/cache",
                 NIXERY_NIX_CACHE_KEY=secret, GUNICORN_CMD_ARGS="--workers 1").start()
    try:
        skopeo_copy(srv, "hello", tmp_path / "oci")
        line = srv.log_line("could not copy", timeout=60)
        assert "(the image is served all the same)" in line
        cache = readyz(srv)["nix_cache"]
        assert cache["failed_copies"] == 1 and cache["last_copy"]["ok"] is False
        metrics = requests.get(f"{srv.url}/metrics", timeout=10).text
        assert 'registry_nix_cache_copies_total{outcome="failed"} 1.0' in metrics
    finally:
        srv.stop()


def test_readiness_reports_the_builders_and_the_cache(builder, tmp_path):
    secret, _ = keypair(tmp_path, "registry-e2e-1")
    srv = Server(str(tmp_path / "registry"), NIXERY_PKGS_PATH=remote_set(tmp_path / "pkgs"),
                 NIX_TIMEOUT="120", NIXERY_NIX_CACHE=f"file://{tmp_path}/cache",
                 NIXERY_NIX_CACHE_KEY=secret, GUNICORN_CMD_ARGS="--workers 1",
                 **remote_env(builder)).start()
    try:
        skopeo_copy(srv, "remote-only", tmp_path / "oci")
        srv.log_line("to the Nix binary cache", timeout=60)
        report = readyz(srv)
        assert report["ready"] is True
        assert report["nix_cache"]["last_copy"]["ok"] is True
        assert report["nix_builders"] == [{"uri": "ssh://root@127.0.0.1",
                                           "systems": "x86_64-linux", "reachable": True}]
        metrics = requests.get(f"{srv.url}/metrics", timeout=10).text
        assert 'registry_nix_builders_reachable{state="reachable"} 1.0' in metrics
        assert 'registry_nix_cache_copies_total{outcome="ok"} 1.0' in metrics
    finally:
        srv.stop()


def test_a_builder_that_is_down_is_the_machines_trouble_not_the_images(builder, tmp_path):
    pkgs = remote_set(tmp_path / "pkgs")
    srv = Server(str(tmp_path / "registry"), NIXERY_PKGS_PATH=pkgs, NIX_TIMEOUT="120",
                 **remote_env(builder)).start()
    try:
        builder.down()
        r = requests.get(f"{srv.url}/v2/remote-only/manifests/latest", timeout=120)
        assert r.status_code == 503 and r.headers["Retry-After"] == "10"
        error = r.json()["errors"][0]
        assert error["code"] == "BUILD_INTERRUPTED" and error["detail"]["cause"] == "remote-builder"
        assert error["message"].startswith(
            "Nix's remote builder ssh://root@127.0.0.1 cannot be reached (")
        assert readyz(srv)["nix_builders"][0]["reachable"] is False
        # the builder is back: the image builds, nothing of the outage is remembered
        builder.start()
        deadline = time.monotonic() + 60
        while True:
            r = requests.get(f"{srv.url}/v2/remote-only/manifests/latest", timeout=120)
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            assert r.status_code == 503
            time.sleep(2)
        assert r.status_code == 200
    finally:
        srv.stop()
