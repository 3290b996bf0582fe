"""An image with a layer deflate cannot shrink, stored as plain tar: every
client pulls it and runs what it holds."""
from __future__ import annotations

import hashlib

import pytest
import requests

from builders.image import manifest
from tests.e2e.conftest import run
from tests.e2e.test_clients import in_root, skopeo_copy, unpack

NAME = "shell/incompressible"
RUN_ARGS = ["--rm", "--network", "none"]


def expected(out: str) -> None:
    """`incompressible` prints the MD5 of its data in the image: it must be
    the MD5 of the store path's file on this machine, which built it."""
    md5, path = out.split()
    with open(path, "rb") as f:
        assert md5 == hashlib.md5(f.read()).hexdigest()


@pytest.mark.parametrize("media_type,tar_type,gzip_type", [
    (manifest.OCI_MANIFEST, manifest.OCI_LAYER_TAR, manifest.OCI_LAYER),
    (manifest.DOCKER_MANIFEST, manifest.DOCKER_LAYER_TAR, manifest.DOCKER_LAYER)])
def test_the_manifest_names_a_plain_tar_layer(server, media_type, tar_type, gzip_type):
    r = requests.get(f"{server.url}/v2/{NAME}/manifests/latest",
                     headers={"Accept": media_type}, timeout=300)
    assert r.status_code == 200, r.text
    types = [l["mediaType"] for l in r.json()["layers"]]
    assert tar_type in types and gzip_type in types
    for layer in r.json()["layers"]:
        if layer["mediaType"] == tar_type:
            blob = requests.get(f"{server.url}/v2/{NAME}/blobs/{layer['digest']}", timeout=60)
            assert blob.content[257:262] == b"ustar"  # a tar, not a gzip
            assert "sha256:" + hashlib.sha256(blob.content).hexdigest() == layer["digest"]


def test_skopeo_umoci_chroot(server, tmp_path):
    skopeo_copy(server, NAME, tmp_path / "oci")
    rootfs = unpack(tmp_path / "oci", tmp_path / "bundle")
    expected(in_root(rootfs, "incompressible"))


def test_podman(server, podman):
    image = f"{server.host}/{NAME}:latest"
    run(podman + ["pull", "--tls-verify=false", image])
    expected(run(podman + ["run", *RUN_ARGS, "--ulimit", "nofile=1024:1024",
                           "--ulimit", "nproc=1024:1024", image, "incompressible"]).stdout)


def test_containerd(server, containerd):
    ctr = ["ctr", "--address", containerd.socket]
    image = f"{server.host}/{NAME}:latest"
    run(ctr + ["images", "pull", "--plain-http", image])
    expected(run(ctr + ["run", "--rm", image, "e2e-incompressible", "incompressible"]).stdout)


def test_docker(server, dockerd):
    image = f"{server.host}/{NAME}:latest"
    run(["docker", "pull", image], env=dockerd.env)
    expected(run(["docker", "run", *RUN_ARGS, image, "incompressible"], env=dockerd.env).stdout)
