"""Answers a worker gives again without the app (app/http/replay.py), on a
real server: the app's answer byte for byte but for its Date and request id,
each one in the access log and the metrics, a moved tag seen within two
seconds, and never a blob that storage no longer holds as it was checked,
nor an answer that needed credentials."""
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import time

import pytest
import requests

from tests.conftest import PKGS, need
from tests.e2e.conftest import run
from tests.e2e.test_operators import samples
from tests.server import Server

OCI = "application/vnd.oci.image.manifest.v1+json"
VARY = {"date", "x-request-id"}


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory):
    """One worker: every answer kept is there to be given again."""
    srv = Server(str(tmp_path_factory.mktemp("replay")), NIXERY_PKGS_PATH=str(PKGS),
                 GUNICORN_CMD_ARGS="--workers 1").start()
    yield srv
    srv.stop()


def ask(conn, method, path, headers=None):
    conn.request(method, path, headers=headers or {})
    r = conn.getresponse()
    body = r.read()
    return r.status, [(k.lower(), v) for k, v in r.getheaders()], body


def same_but_varying(a, b):
    status_a, headers_a, body_a = a
    status_b, headers_b, body_b = b
    return (status_a, [h for h in headers_a if h[0] not in VARY], body_a) == \
        (status_b, [h for h in headers_b if h[0] not in VARY], body_b)


def counted(srv, name, **labels):
    key = tuple(sorted(labels.items()))
    return samples(srv, name).get(key, 0)


def eventually(check, timeout=10):
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "not within the time allowed"
        time.sleep(0.2)


def test_a_repeated_request_gets_the_apps_answer_again(one_worker):
    """For the smallest blob and the largest alike."""
    srv = one_worker
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    manifest_path = "/v2/hello/manifests/latest"
    status, _, body = ask(conn, "GET", manifest_path, {"Accept": OCI})
    assert status == 200
    layers = json.loads(body)["layers"]
    blobs = [min(layers, key=lambda layer: layer["size"]),
             max(layers, key=lambda layer: layer["size"])]
    assert blobs[0]["size"] < blobs[1]["size"]
    before = {
        "replayed": counted(srv, "registry_replayed_answers_total", kind="blob"),
        "gets": counted(srv, "registry_http_requests_total", method="GET",
                        route="registry.blobs", status="200"),
        "heads": counted(srv, "registry_http_requests_total", method="HEAD",
                         route="registry.blobs", status="200"),
        "bytes": counted(srv, "registry_served_bytes_total", kind="blob"),
    }
    rounds = 6
    answers = {"manifest": []}
    for blob in blobs:
        answers["GET", blob["digest"]], answers["HEAD", blob["digest"]] = [], []
    for _ in range(rounds):
        answers["manifest"].append(ask(conn, "GET", manifest_path, {"Accept": OCI}))
        for blob in blobs:
            blob_path = f"/v2/hello/blobs/{blob['digest']}"
            answers["HEAD", blob["digest"]].append(ask(conn, "HEAD", blob_path))
            answers["GET", blob["digest"]].append(ask(conn, "GET", blob_path))
    sock = conn.sock
    assert sock is not None  # one connection throughout: later answers were given again

    for kind, runs in answers.items():
        for answer in runs[1:]:
            assert same_but_varying(runs[0], answer), kind
    ids = [dict(h)["x-request-id"] for runs in answers.values() for _, h, _ in runs]
    assert len(set(ids)) == len(ids)  # each answer its own id
    for blob in blobs:
        blob_path = f"/v2/hello/blobs/{blob['digest']}"
        gets, heads = answers["GET", blob["digest"]], answers["HEAD", blob["digest"]]
        for get_status, get_headers, get_body in gets:
            assert get_status == 200
            assert "sha256:" + hashlib.sha256(get_body).hexdigest() == blob["digest"]
            assert dict(get_headers)["content-length"] == str(blob["size"])
        assert heads[-1][2] == b""
        assert dict(heads[-1][1])["content-length"] == str(blob["size"])
        # the answers given again are in the access log
        for _, headers, _ in gets:
            line = srv.log_line(dict(headers)["x-request-id"])
            assert f'"GET {blob_path}" 200 {blob["size"]} ' in line
        for _, headers, _ in heads:
            assert f'"HEAD {blob_path}" 200 0 ' in srv.log_line(dict(headers)["x-request-id"])

    # and in the metrics
    eventually(lambda: counted(srv, "registry_http_requests_total", method="GET",
                               route="registry.blobs", status="200")
               == before["gets"] + rounds * len(blobs))
    assert counted(srv, "registry_http_requests_total", method="HEAD", route="registry.blobs",
                   status="200") == before["heads"] + rounds * len(blobs)
    assert counted(srv, "registry_served_bytes_total", kind="blob") == \
        before["bytes"] + rounds * sum(blob["size"] for blob in blobs)
    # all but the app's own first answer of each (GET and HEAD) were given again
    assert counted(srv, "registry_replayed_answers_total", kind="blob") == \
        before["replayed"] + 2 * (rounds - 1) * len(blobs)
    assert counted(srv, "registry_replayed_answers_total", kind="manifest") > 0
    conn.close()


def _blob_file(srv, digest):
    return os.path.join(srv.workdir, "storage", "layers", digest)


def _corrupt(path):
    with open(path, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))


def _cut(path):
    os.truncate(path, os.path.getsize(path) // 2)


@pytest.mark.parametrize("harm", [_corrupt, _cut, os.unlink],
                         ids=["changed in place", "cut short", "removed"])
def test_a_blob_storage_no_longer_holds_as_checked_is_not_given_again(one_worker, harm):
    srv = one_worker
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    status, _, body = ask(conn, "GET", "/v2/hello/manifests/latest", {"Accept": OCI})
    assert status == 200
    blob = max(json.loads(body)["layers"], key=lambda layer: layer["size"])
    blob_path = f"/v2/hello/blobs/{blob['digest']}"
    for _ in range(3):  # kept, then given again
        assert ask(conn, "HEAD", blob_path)[0] == 200
        status, _, got = ask(conn, "GET", blob_path)
        assert status == 200 and hashlib.sha256(got).hexdigest() == blob["digest"][7:]
    path = _blob_file(srv, blob["digest"])
    assert os.path.exists(path), os.listdir(os.path.dirname(path))
    harm(path)
    for method in ("HEAD", "GET"):
        status, headers, got = ask(conn, method, blob_path)
        # the app sees it: sets aside what is there, makes the blob again
        assert status == 200, got
        assert dict(headers)["content-length"] == str(blob["size"])
        if method == "GET":
            assert hashlib.sha256(got).hexdigest() == blob["digest"][7:]
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == blob["digest"][7:]
    conn.close()


def test_a_manifest_by_tag_is_given_again_two_seconds_at_most(one_worker):
    """Tags move: within two seconds of its answer the app answers a tag
    again (it counts a manifest cache lookup each time it does)."""
    srv = one_worker
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    path = "/v2/hello/manifests/latest"

    def lookups():
        return sum(samples(srv, "registry_manifest_cache_total").values())

    for _ in range(2):
        assert ask(conn, "GET", path, {"Accept": OCI})[0] == 200
    start, before = time.monotonic(), lookups()
    answered = 0
    while time.monotonic() - start < 1.0:
        assert ask(conn, "GET", path, {"Accept": OCI})[0] == 200
        answered += 1
    # given again (not one lookup a request), yet no older than two seconds
    assert lookups() - before <= 1 < answered
    time.sleep(2.2)
    before = lookups()
    assert ask(conn, "GET", path, {"Accept": OCI})[0] == 200
    assert lookups() == before + 1
    conn.close()


def test_with_credentials_every_answer_is_the_apps(tmp_path):
    need("htpasswd")
    users = tmp_path / "htpasswd"
    run(["htpasswd", "-B", "-b", "-c", str(users), "alice", "wonderland"])
    srv = Server(str(tmp_path / "srv"), NIXERY_PKGS_PATH=str(PKGS), NIXERY_HTPASSWD=str(users),
                 GUNICORN_CMD_ARGS="--workers 1").start()
    try:
        good = {"Authorization": "Basic " + base64.b64encode(b"alice:wonderland").decode(),
                "Accept": OCI}
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
        status, _, body = ask(conn, "GET", "/v2/hello/manifests/latest", good)
        assert status == 200
        blob_path = f"/v2/hello/blobs/{json.loads(body)['layers'][0]['digest']}"
        for _ in range(4):
            assert ask(conn, "GET", blob_path, good)[0] == 200
            assert ask(conn, "GET", "/v2/hello/manifests/latest", good)[0] == 200
        assert ask(conn, "GET", blob_path)[0] == 401  # no credentials, same connection
        time.sleep(1.5)  # a second's counts of answers given again would be in by now
        metrics = requests.get(srv.url + "/metrics", auth=("alice", "wonderland"), timeout=10)
        assert metrics.status_code == 200
        assert "registry_http_requests_total" in metrics.text
        assert "registry_replayed_answers_total{" not in metrics.text
        conn.close()
    finally:
        srv.stop()
