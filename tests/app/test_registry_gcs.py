"""Blob answers with the GCS backend (a real emulator) through the Flask client."""
import hashlib
import os

import pytest
import requests

from app import create_app
from app.config import Config
from storage import keys
from tests.conftest import PKGS
from tests.server import free_port


def gcs_app(tmp_path, **settings):
    return create_app(Config(pkgs_path=str(PKGS), storage_path=str(tmp_path / "unused"),
                             storage_backend="gcs", **settings))


@pytest.fixture
def layer():
    data = os.urandom(300_000)
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


def test_blob_get_redirects_to_a_signed_url_and_head_does_not(tmp_path, gcs_emulator,
                                                             gcs_bucket, gcs_key, layer):
    app = gcs_app(tmp_path, bucket=gcs_bucket, gcs_endpoint=gcs_emulator.url,
                  google_credentials=gcs_key)
    data, digest = layer
    app.extensions["storage"].put_bytes(keys.blob(digest), data)
    client = app.test_client()

    head = client.head(f"/v2/shell/hello/blobs/{digest}")
    assert head.status_code == 200 and "Location" not in head.headers
    assert head.headers["Content-Length"] == str(len(data))
    assert head.headers["Docker-Content-Digest"] == digest

    get = client.get(f"/v2/shell/hello/blobs/{digest}")
    assert get.status_code == 307
    location = get.headers["Location"]
    assert location.startswith(gcs_emulator.url + "/") and "X-Goog-Signature=" in location
    fetched = requests.get(location, timeout=30).content
    assert "sha256:" + hashlib.sha256(fetched).hexdigest() == digest


def test_without_signing_credentials_blobs_stream_with_ranges(tmp_path, gcs_emulator,
                                                              gcs_bucket, layer):
    app = gcs_app(tmp_path, bucket=gcs_bucket, gcs_endpoint=gcs_emulator.url)
    data, digest = layer
    app.extensions["storage"].put_bytes(keys.blob(digest), data)
    client = app.test_client()

    get = client.get(f"/v2/shell/hello/blobs/{digest}")
    assert get.status_code == 200 and get.data == data
    part = client.get(f"/v2/shell/hello/blobs/{digest}", headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.data == data[1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"


def test_unreachable_bucket_answers_503_naming_storage(tmp_path):
    app = gcs_app(tmp_path, bucket="images", gcs_endpoint=f"http://127.0.0.1:{free_port()}",
                  gcs_retry_seconds=1)
    client = app.test_client()
    for path in ("/v2/shell/hello/manifests/latest", "/v2/shell/hello/blobs/sha256:" + "a" * 64):
        r = client.get(path)
        assert r.status_code == 503
        error = r.get_json()["errors"][0]
        assert error["code"] == "STORAGE_UNAVAILABLE"
        assert "Google Cloud Storage bucket images" in error["message"]
        assert "Traceback" not in r.get_data(as_text=True)


def test_with_authentication_the_signed_url_is_the_credential(tmp_path, gcs_emulator,
                                                              gcs_bucket, gcs_key, layer):
    from tests.app.test_auth import basic, entry
    users = tmp_path / "htpasswd"
    users.write_text(entry("alice", "wonderland"))
    app = gcs_app(tmp_path, bucket=gcs_bucket, gcs_endpoint=gcs_emulator.url,
                  google_credentials=gcs_key, htpasswd=str(users), tls_in_front=True)
    data, digest = layer
    app.extensions["storage"].put_bytes(keys.blob(digest), data)
    client = app.test_client()
    assert client.get(f"/v2/shell/hello/blobs/{digest}").status_code == 401
    get = client.get(f"/v2/shell/hello/blobs/{digest}", headers=basic("alice", "wonderland"))
    assert get.status_code == 307
    # the client follows it to storage without the registry's credentials
    fetched = requests.get(get.headers["Location"], timeout=30).content
    assert "sha256:" + hashlib.sha256(fetched).hexdigest() == digest
