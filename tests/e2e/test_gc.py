"""Garbage collection while a real server serves and builds, on both
backends: `flask --app app gc` runs again and again while clients pull
images by tag and by digest and the server builds new ones, one of them
(on the filesystem) reusing layers the collection is judging.  No pull
fails, and every image left in storage is whole.

Garbage is made as it is in production: by another instance, days ago.
Here an instance in this process builds images, one record is removed
(as if it had expired), and every object is dated three days back.  On
GCS a build that reuses a layer being judged is covered with `responses`
(tests/storage/test_gcs.py): fake-gcs-server does not enforce the
preconditions that keep such a layer."""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import sys
import threading
import time

import pytest
import requests

from tests.conftest import PKGS, ROOT
from tests.e2e.test_clients import in_root, skopeo_copy, unpack
from tests.server import Server

DOCKER = "application/vnd.docker.distribution.manifest.v2+json"
DAYS_AGO = 3
# every path popular: each has a layer of its own, shared by every image
# holding that path, so a new image reuses old layers
POPULAR = ["busybox", "hello-1.0", "git-1.0", "htop-1.0", "curl-1.0", "libshared-1.0",
           "nano-1.0"]


@pytest.fixture(params=["filesystem", "gcs"])
def backend(request, tmp_path):
    popularity = tmp_path / "popularity.json"
    popularity.write_text(json.dumps({n: 100 for n in POPULAR}))
    env = dict(NIXERY_PKGS_PATH=str(PKGS), NIX_TIMEOUT="120",
               NIX_POPULARITY_URL=popularity.as_uri())
    if request.param == "filesystem":
        env.update(STORAGE_PATH=str(tmp_path / "storage"))
    else:
        emulator = request.getfixturevalue("gcs_emulator")
        env.update(NIXERY_STORAGE_BACKEND="gcs", GCS_BUCKET=emulator.create_bucket("gc"),
                   STORAGE_EMULATOR_HOST=emulator.url,
                   GOOGLE_APPLICATION_CREDENTIALS=request.getfixturevalue("gcs_key"))
    return request.param, env


def config_of(env, state):
    from app.config import Config
    return Config.from_env({**env, "NIXERY_STATE_PATH": str(state)})


def date_back(store, kind, days):
    """Every object as last written or used `days` ago."""
    then = time.time() - days * 24 * 3600
    for info in list(store.list("")):
        if kind == "filesystem":
            os.utime(store._path(info.key), (then, then))
        else:
            blob = store._bucket.blob(info.key)
            blob.custom_time = datetime.datetime.fromtimestamp(then, datetime.timezone.utc)
            blob.patch()


def pull(server, name, reference="latest"):
    """A whole pull over HTTP: the manifest, then every blob, checked."""
    r = requests.get(f"{server.url}/v2/{name}/manifests/{reference}",
                     headers={"Accept": DOCKER}, timeout=300)
    assert r.status_code == 200, (name, reference, r.status_code, r.text[:300])
    manifest = r.json()
    for blob in [manifest["config"], *manifest["layers"]]:
        got = requests.get(f"{server.url}/v2/{name}/blobs/{blob['digest']}", timeout=300)
        assert got.status_code == 200, (name, blob["digest"], got.status_code, got.text[:300])
        assert "sha256:" + hashlib.sha256(got.content).hexdigest() == blob["digest"]
    return r.headers["Docker-Content-Digest"]


def whole(store):
    """Every image record left in storage, with its blobs all there."""
    from builders.image.records import IndexRecord, load_record, references
    records = []
    for info in store.list("manifests/"):
        record = load_record(store.read(info.key))
        if isinstance(record, IndexRecord):
            continue
        missing = [d for d in references(record) if not store.exists(f"layers/{d}")]
        assert not missing, (record.packages, missing)
        records.append(record)
    return records


def test_gc_while_images_are_pulled_and_built(backend, tmp_path):
    from app import make_images
    import storage as storage_mod
    from builders.image.names import Image
    from storage import keys
    kind, env = backend
    config = config_of(env, tmp_path / "old-state")
    store = storage_mod.from_config(config)

    # days ago, another instance built these; curl's record has expired since
    old = make_images(config, store)
    kept = old.image(Image.from_name("git/hello"), "latest")
    curl = old.image(Image.from_name("curl"), "latest")
    store.delete_if(keys.manifest(curl.key), next(
        i.version for i in store.list("manifests/") if i.key == keys.manifest(curl.key)))
    date_back(store, kind, DAYS_AGO)
    garbage = {l["digest"] for l in curl.layers} - {l["digest"] for l in kept.layers}
    assert garbage  # curl's own layers, its config, manifests and SBOM

    server = Server(str(tmp_path / "server"), **env).start()
    try:
        digest = pull(server, "git/hello")
        errors, collections = [], []

        def guarded(fn):
            def run():
                try:
                    fn()
                except BaseException as e:  # noqa: BLE001 - reported below
                    errors.append(e)
            return threading.Thread(target=run)

        def pulls():
            for _ in range(6):
                pull(server, "git/hello")
                pull(server, "git/hello", digest)  # as Kubernetes pins it
                pull(server, "shell/hello")

        # on the filesystem, a new image sharing curl's layers: the build
        # reuses (and marks) layers the collection is judging
        new_name = "curl/htop" if kind == "filesystem" else "htop/nano"

        def builds():
            pull(server, new_name)

        def collect():
            for _ in range(4):
                done = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "gc"],
                                      cwd=ROOT, env={**os.environ, **env,
                                                     "NIXERY_STATE_PATH": str(tmp_path / "gc")},
                                      capture_output=True, text=True, timeout=300)
                assert done.returncode == 0, done.stderr + done.stdout
                collections.append(done.stdout)

        threads = [guarded(pulls), guarded(builds), guarded(collect)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors

        # the collections deleted curl's own blobs, nothing any image needs
        deleted = "".join(collections)
        assert f"deleted {keys.manifest(curl.key)}" not in deleted  # it was gone already
        assert any(f"deleted layers/{d}" in deleted for d in
                   [curl.config["digest"], *(curl.sbom["referrers"][s]["digest"]
                                             for s in curl.sbom["referrers"])])
        left = whole(store)
        assert {tuple(r.packages) for r in left} >= {("git", "hello"), tuple(sorted(
            new_name.split("/")))}
        # what a real client pulls now is whole and runs
        skopeo_copy(server, new_name, tmp_path / "oci")
        rootfs = unpack(tmp_path / "oci", tmp_path / "bundle")
        program = new_name.split("/")[0]
        assert in_root(rootfs, program).startswith(program + " ")
        pull(server, "git/hello", digest)
    finally:
        server.stop()
