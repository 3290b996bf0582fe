"""The registry on an S3 bucket of a real S3 endpoint (moto's server),
configured only by boto3's own settings: an image pulls and runs through
presigned redirects, two instances on one bucket build a new image once,
and the operator's commands work on the bucket."""
from __future__ import annotations

import hashlib
import os
import sys

import pytest
import requests

from tests.conftest import PKGS, drowsy_set
from tests.e2e.conftest import run
from tests.e2e.test_clients import in_root, skopeo_copy, unpack
from tests.e2e.test_gcs import BLOB_REDIRECT, BLOB_STREAMED, pulled_at_once_built_once
from tests.server import Server

OCI = "application/vnd.oci.image.manifest.v1+json"


def s3_env(s3_server, bucket, **more):
    return dict(NIXERY_STORAGE_BACKEND="s3", BUCKET=bucket, NIXERY_PKGS_PATH=str(PKGS),
                NIX_TIMEOUT="120", **s3_server.env, **more)


@pytest.fixture(scope="module")
def on_s3(tmp_path_factory, s3_server):
    bucket = s3_server.create_bucket("e2e")
    srv = Server(str(tmp_path_factory.mktemp("s3")), **s3_env(s3_server, bucket)).start()
    yield srv, bucket
    srv.stop()


def test_an_image_pulls_and_runs_through_presigned_redirects(on_s3, s3_server, tmp_path):
    srv, bucket = on_s3
    skopeo_copy(srv, "shell/hello", tmp_path / "oci")
    rootfs = unpack(tmp_path / "oci", tmp_path / "bundle")
    assert in_root(rootfs, "hello") == "Hello, world!\n"
    log = srv.read_log()
    assert BLOB_REDIRECT.search(log) and not BLOB_STREAMED.search(log)

    # its layers are objects named by their digests
    manifest = requests.get(f"{srv.url}/v2/shell/hello/manifests/latest",
                            headers={"Accept": OCI}, timeout=30).json()
    names = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]}
    for layer in manifest["layers"]:
        assert f"layers/{layer['digest']}" in names
    # a blob GET redirects to a presigned URL on the endpoint, which has its bytes
    layer = manifest["layers"][0]
    r = requests.get(f"{srv.url}/v2/shell/hello/blobs/{layer['digest']}", allow_redirects=False,
                     timeout=30)
    assert r.status_code == 307
    assert r.headers["Location"].startswith(f"{s3_server.url}/{bucket}/layers/sha256")
    assert "Signature=" in r.headers["Location"] or "X-Amz-Signature=" in r.headers["Location"]
    data = requests.get(r.headers["Location"], timeout=30).content
    assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"]
    assert len(data) == layer["size"]
    assert os.listdir(os.path.join(srv.workdir, "storage")) == [".state"]


def test_operator_commands_work_on_the_bucket(on_s3, s3_server):
    srv, bucket = on_s3
    command = os.path.join(os.path.dirname(sys.executable), "nix-image-registry")
    env = {**os.environ, **s3_env(s3_server, bucket)}
    dry = run([command, "gc", "--dry-run"], env=env, cwd=srv.workdir)
    assert " objects" in dry.stdout and " in all" in dry.stdout
    shown = run([command, "config"], env=env, cwd=srv.workdir).stdout.splitlines()
    assert "NIXERY_STORAGE_BACKEND=s3" in shown and f"BUCKET={bucket}" in shown
    listed = run([command, "failures", "list"], env=env, cwd=srv.workdir)
    assert listed.returncode == 0


def test_two_instances_on_one_bucket_build_a_new_image_once(tmp_path, s3_server):
    env = s3_env(s3_server, s3_server.create_bucket(), NIXERY_PULL_WAIT="60",
                 NIXERY_BUILD_LEASE="4")
    env["NIXERY_PKGS_PATH"] = drowsy_set(tmp_path / "pkgs", 8)
    servers = [Server(str(tmp_path / name), **env).start() for name in ("one", "two")]
    try:
        pulled_at_once_built_once(servers)
    finally:
        for srv in servers:
            srv.stop()


@pytest.mark.parametrize("missing", ["credentials", "bucket"])
def test_start_up_without_credentials_or_bucket_stops_in_one_line(missing, tmp_path, s3_server):
    command = os.path.join(os.path.dirname(sys.executable), "nix-image-registry")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(s3_env(s3_server, "no-such-bucket" if missing == "bucket"
                      else s3_server.create_bucket()), HOME=str(tmp_path), PORT="1")
    if missing == "credentials":
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.pop(name)
        env["AWS_EC2_METADATA_DISABLED"] = "true"  # no instance role to look for here
    done = run([command, "serve"], env=env, cwd=tmp_path, check=False, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    want = ("no AWS credentials found" if missing == "credentials"
            else f"the bucket does not exist at {s3_server.url}")
    assert done.stderr.count("\n") == 1 and want in done.stderr, done.stderr
    assert done.stderr.startswith("storage error: S3 bucket ")
