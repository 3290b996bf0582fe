"""Cached manifests and whole blobs answered below Flask, and everything
else left to it."""
import hashlib
import os

import pytest

from builders.manifest import DOCKER_MANIFEST, OCI_MANIFEST
from storage import keys


@pytest.fixture
def blob(storage):
    data = os.urandom(300_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    storage.put_bytes(keys.blob(digest), data)
    return digest, data


@pytest.fixture
def flask_calls(app):
    """How many requests reached the registry's Flask route."""
    calls = []
    view = app.view_functions["registry.dispatch"]

    def counted(*args, **kwargs):
        calls.append(1)
        return view(*args, **kwargs)
    app.view_functions["registry.dispatch"] = counted
    return calls


def test_a_whole_blob_is_served_without_the_flask_route(client, blob, flask_calls):
    digest, data = blob
    r = client.get(f"/v2/shell/hello/blobs/{digest}", headers={"X-Request-ID": "fast-1"})
    assert r.status_code == 200 and r.data == data
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Content-Length"] == str(len(data))
    assert r.headers["X-Request-ID"] == "fast-1"
    head = client.head(f"/v2/shell/hello/blobs/{digest}")
    assert head.status_code == 200 and head.data == b""
    assert head.headers["Content-Length"] == str(len(data))
    assert flask_calls == []


def comparable(r):
    return sorted((k, v) for k, v in r.headers.items() if k not in ("X-Request-ID", "Date"))


def test_both_paths_send_the_same_blob_headers(client, blob, flask_calls):
    digest, data = blob
    fast = client.get(f"/v2/hello/blobs/{digest}")
    # a conditional request is Flask's to answer; this one still gets the whole blob
    slow = client.get(f"/v2/hello/blobs/{digest}", headers={"If-None-Match": '"other"'})
    assert len(flask_calls) == 1
    assert slow.status_code == fast.status_code == 200 and slow.data == fast.data == data
    assert comparable(fast) == comparable(slow)


@pytest.mark.parametrize("path,headers,status", [
    ("/v2/hello/blobs/{digest}", {"Range": "bytes=0-9"}, 206),
    ("/v2/hello/blobs/sha256:" + "0" * 64, {}, 404),          # unknown: reported by Flask
    ("/v2/Hello/blobs/{digest}", {}, 400),                     # bad name
    ("/v2/hello/blobs/{digest}/", {}, 404),
    ("/v2/hello/blobs/sha256:ABC", {}, 400),                   # bad digest
])
def test_anything_but_a_plain_blob_get_reaches_flask(client, blob, flask_calls, path, headers,
                                                     status):
    digest, _ = blob
    r = client.get(path.format(digest=digest), headers=headers)
    assert r.status_code == status
    assert flask_calls == [1]
    if status >= 400:
        assert r.get_json()["errors"][0]["code"]


def test_a_corrupt_blob_is_left_to_flask_and_never_served(client, blob, storage, flask_calls):
    digest, data = blob
    with open(os.path.join(storage.root, keys.blob(digest)), "r+b") as f:
        f.write(b"\0" * 16)
    r = client.get(f"/v2/hello/blobs/{digest}")
    assert r.status_code == 404
    assert r.get_json()["errors"][0]["code"] == "BLOB_UNKNOWN"
    assert "corrupt" in r.get_json()["errors"][0]["message"]
    assert flask_calls == [1]


def test_a_built_image_is_served_from_memory_alike(client, flask_calls):
    url = "/v2/shell/hello/manifests/latest"
    for accept in (OCI_MANIFEST, DOCKER_MANIFEST):
        calls = len(flask_calls)
        first = client.get(url, headers={"Accept": accept})
        assert first.status_code == 200 and first.content_type == accept
        again = client.get(url, headers={"Accept": accept, "X-Request-ID": "again-1"})
        head = client.head(url, headers={"Accept": accept})
        assert again.data == first.data and head.data == b""
        assert comparable(again) == comparable(first) == comparable(head)
        assert again.headers["X-Request-ID"] == "again-1"
        assert len(flask_calls) == calls + (1 if accept == OCI_MANIFEST else 0)
    # by digest: Flask reads it from storage
    digest = first.headers["Docker-Content-Digest"]
    assert client.get(f"/v2/shell/hello/manifests/{digest}").data == first.data
    assert len(flask_calls) == 2


def test_a_tag_due_for_a_new_look_at_the_source_reaches_flask(app, client, flask_calls):
    url = "/v2/hello/manifests/latest"
    assert client.get(url).status_code == 200
    app.extensions["images"].source_refresh = 0  # every revision is stale now
    assert client.get(url).status_code == 200
    assert flask_calls == [1, 1]
