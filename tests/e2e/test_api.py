"""The registry API on the wire, against a real gunicorn server."""
from __future__ import annotations

import hashlib
import http.client
import json
import time

import pytest
import requests

from builders.image.manifest import DOCKER_MANIFEST, OCI_MANIFEST
from builders.process import descendants
from tests.e2e.conftest import run
from tests.e2e.test_clients import skopeo_copy

# What skopeo and podman send: one Accept header per type.
SKOPEO_ACCEPT = [OCI_MANIFEST, DOCKER_MANIFEST,
                 "application/vnd.docker.distribution.manifest.v1+prettyjws",
                 "application/vnd.docker.distribution.manifest.v1+json",
                 "application/vnd.docker.distribution.manifest.list.v2+json",
                 "application/vnd.oci.image.index.v1+json"]
# What containerd sends: one header, comma-joined, with */*.
CONTAINERD_ACCEPT = ", ".join([DOCKER_MANIFEST,
                               "application/vnd.docker.distribution.manifest.list.v2+json",
                               OCI_MANIFEST, "application/vnd.oci.image.index.v1+json", "*/*"])


def raw(server, method, path, headers=()):
    """A request with repeated headers, which `requests` cannot send."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
    conn.putrequest(method, path)
    for k, v in headers:
        conn.putheader(k, v)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body


def error_of(resp):
    assert resp.headers["Content-Type"] == "application/json"
    errors = resp.json()["errors"]
    assert len(errors) == 1 and set(errors[0]) == {"code", "message", "detail"}
    return errors[0]


def test_base_endpoint(server):
    r = requests.get(server.url + "/v2/")
    assert r.status_code == 200 and r.json() == {}
    assert r.headers["Content-Type"] == "application/json"
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_head_then_get_by_digest_builds_once(server):
    before = server.builds()
    head = requests.head(server.url + "/v2/git/curl/manifests/latest",
                         headers={"Accept": DOCKER_MANIFEST})
    assert head.status_code == 200, head.text
    digest = head.headers["Docker-Content-Digest"]
    assert head.headers["Content-Type"] == DOCKER_MANIFEST
    assert int(head.headers["Content-Length"]) > 0 and head.content == b""

    get = requests.get(f"{server.url}/v2/git/curl/manifests/{digest}")
    assert get.status_code == 200
    assert get.headers["Content-Type"] == DOCKER_MANIFEST
    assert get.headers["Docker-Content-Digest"] == digest
    assert "sha256:" + hashlib.sha256(get.content).hexdigest() == digest
    assert int(head.headers["Content-Length"]) == len(get.content)
    # HEAD by digest answers the same headers
    head2 = requests.head(f"{server.url}/v2/git/curl/manifests/{digest}")
    assert head2.headers["Content-Length"] == head.headers["Content-Length"]
    assert server.builds() == before + 1


def test_order_and_duplicates_are_one_image(server):
    before = server.builds()
    a = requests.get(server.url + "/v2/htop/git/git/manifests/latest")
    b = requests.get(server.url + "/v2/git/htop/manifests/latest")
    assert a.status_code == 200 and b.status_code == 200
    assert a.content == b.content
    assert a.headers["Docker-Content-Digest"] == b.headers["Docker-Content-Digest"]
    assert server.builds() == before + 1


@pytest.mark.parametrize("headers,expected", [
    ([("Accept", t) for t in SKOPEO_ACCEPT], OCI_MANIFEST),
    ([("Accept", CONTAINERD_ACCEPT)], DOCKER_MANIFEST),
    ([("Accept", OCI_MANIFEST)], OCI_MANIFEST),
    ([("Accept", f"{DOCKER_MANIFEST};q=0.5, {OCI_MANIFEST}")], OCI_MANIFEST),
    ([("Accept", "*/*")], DOCKER_MANIFEST),
    ([], DOCKER_MANIFEST),
])
def test_accept_picks_the_manifest_format(server, headers, expected):
    for method in ("GET", "HEAD"):
        resp, body = raw(server, method, "/v2/hello/manifests/latest", headers)
        assert resp.status == 200
        assert resp.headers["Content-Type"] == expected
        assert int(resp.headers["Content-Length"]) > 0
        if method == "GET":
            doc = json.loads(body)
            assert doc["mediaType"] == expected and doc["schemaVersion"] == 2
            assert resp.headers["Docker-Content-Digest"] == "sha256:" + hashlib.sha256(body).hexdigest()
            # fetched by digest: the same bytes, whatever is accepted
            by_digest = requests.get(
                f"{server.url}/v2/hello/manifests/{resp.headers['Docker-Content-Digest']}",
                headers={"Accept": DOCKER_MANIFEST if expected == OCI_MANIFEST else OCI_MANIFEST})
            assert by_digest.content == body
            assert by_digest.headers["Content-Type"] == expected


def _a_layer(server):
    doc = requests.get(server.url + "/v2/hello/manifests/latest").json()
    return max(doc["layers"], key=lambda l: l["size"])


def test_blob_get_head_and_ranges(server):
    layer = _a_layer(server)
    url = f"{server.url}/v2/hello/blobs/{layer['digest']}"
    full = requests.get(url)
    assert full.status_code == 200
    assert len(full.content) == layer["size"]
    assert "sha256:" + hashlib.sha256(full.content).hexdigest() == layer["digest"]
    assert full.headers["Docker-Content-Digest"] == layer["digest"]

    head = requests.head(url)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["Content-Length"]) == layer["size"]

    part = requests.get(url, headers={"Range": "bytes=10-99"})
    assert part.status_code == 206
    assert part.content == full.content[10:100]
    assert part.headers["Content-Range"] == f"bytes 10-99/{layer['size']}"

    tail = requests.get(url, headers={"Range": "bytes=-5"})
    assert tail.status_code == 206 and tail.content == full.content[-5:]

    beyond = requests.get(url, headers={"Range": f"bytes={layer['size']}-"})
    assert beyond.status_code == 416
    assert beyond.headers["Content-Range"] == f"bytes */{layer['size']}"
    assert error_of(beyond)["code"] == "RANGE_INVALID"


def test_unknown_blob_and_manifest_digests(server):
    missing = "sha256:" + "0" * 64
    r = requests.get(f"{server.url}/v2/hello/blobs/{missing}")
    assert r.status_code == 404 and error_of(r)["code"] == "BLOB_UNKNOWN"
    assert missing in error_of(r)["message"]
    r = requests.get(f"{server.url}/v2/hello/manifests/{missing}")
    assert r.status_code == 404 and error_of(r)["code"] == "MANIFEST_UNKNOWN"
    # a layer's digest is a blob, not a manifest
    r = requests.get(f"{server.url}/v2/hello/manifests/{_a_layer(server)['digest']}")
    assert r.status_code == 404 and error_of(r)["code"] == "MANIFEST_UNKNOWN"


@pytest.mark.parametrize("path,code", [
    ("/v2/hello/blobs/sha256:abc", "DIGEST_INVALID"),
    ("/v2/hello/blobs/md5:" + "0" * 32, "DIGEST_INVALID"),
    ("/v2/hello/blobs/sha256:" + "G" * 64, "DIGEST_INVALID"),
    ("/v2/hello/manifests/sha256:" + "0" * 63, "DIGEST_INVALID"),
    ("/v2/hello/blobs/latest", "DIGEST_INVALID"),
    ("/v2/Hello/manifests/latest", "NAME_INVALID"),
    ("/v2/hello..world/manifests/latest", "NAME_INVALID"),
    ("/v2/hello/-x/manifests/latest", "NAME_INVALID"),
    ("/v2/" + "a" * 256 + "/manifests/latest", "NAME_INVALID"),
    ("/v2/hello/manifests/-bad", "TAG_INVALID"),
    ("/v2/hello/manifests/" + "t" * 129, "TAG_INVALID"),
    ("/v2/hello/manifests/a%24(b)", "TAG_INVALID"),
])
def test_bad_input_is_400(server, path, code):
    r = requests.get(server.url + path)
    assert r.status_code == 400, r.text
    assert error_of(r)["code"] == code


@pytest.mark.parametrize("method,path", [
    ("PUT", "/v2/hello/manifests/latest"),
    ("DELETE", "/v2/hello/manifests/latest"),
    ("POST", "/v2/hello/blobs/uploads/"),
    ("PATCH", "/v2/hello/blobs/uploads/abc"),
    ("DELETE", "/v2/hello/blobs/sha256:" + "0" * 64),
    ("POST", "/v2/"),
])
def test_write_methods_are_unsupported(server, method, path):
    r = requests.request(method, server.url + path, data=b"x")
    assert r.status_code == 405
    err = error_of(r)
    assert err["code"] == "UNSUPPORTED" and "pull-only" in err["message"]


def test_unknown_packages_are_all_named(server, tmp_path):
    r = requests.get(server.url + "/v2/shell/nosuchthing/gti/htpo/manifests/latest")
    assert r.status_code == 404
    err = error_of(r)
    assert err["code"] == "MANIFEST_UNKNOWN"
    for name in ("nosuchthing", "gti", "htpo"):
        assert name in err["message"]
    assert "did you mean git" in err["message"] and "htop" in err["message"]
    # and skopeo shows the user the same words
    done = skopeo_copy(server, "hello/nosuchthing", tmp_path / "oci", check=False)
    assert done.returncode != 0 and "nosuchthing" in done.stderr


@pytest.mark.parametrize("name,words", [
    ("broken", ["broken", "fails to build on purpose"]),
    ("unfree-tool", ["unfree-tool", "unfree license"]),
    ("insecure-tool", ["insecure-tool", "marked as broken"]),
    ("notapackage", ["notapackage", "not a package"]),
])
def test_unbuildable_packages_say_why(server, name, words, tmp_path):
    r = requests.get(f"{server.url}/v2/hello/{name}/manifests/latest")
    assert r.status_code == 422
    err = error_of(r)
    assert err["code"] == "BUILD_FAILED"
    text = err["message"] + json.dumps(err["detail"])
    for word in words:
        assert word in text
    done = skopeo_copy(server, f"hello/{name}", tmp_path / "oci", check=False)
    assert done.returncode != 0 and words[0] in done.stderr


def test_megabytes_of_build_log_neither_hang_nor_flood(server):
    ok = requests.get(server.url + "/v2/chatty/manifests/latest")
    assert ok.status_code == 200
    r = requests.get(server.url + "/v2/chatty-broken/manifests/latest")
    assert r.status_code == 422
    err = error_of(r)
    assert "chatty-broken" in err["message"]
    assert "the last words of the build" in err["detail"]["log"]
    assert len(r.content) < 64 * 1024


def _leftover_builders():
    out = run(["ps", "-eo", "pid,args"]).stdout
    return [line for line in out.splitlines() if "sleep 3600" in line and "ps -eo" not in line]


def test_timeout_is_reported_and_kills_the_build(slow_server, tmp_path):
    started = time.monotonic()
    r = requests.get(slow_server.url + "/v2/slow/manifests/latest")
    elapsed = time.monotonic() - started
    assert r.status_code == 422  # a 4xx, so clients print why
    err = error_of(r)
    assert err["code"] == "BUILD_TIMEOUT"
    assert "NIX_TIMEOUT" in err["message"] and "4s" in err["message"]
    assert elapsed < 15
    # nothing of the build is left running: not Nix, not the builder's child
    assert _leftover_builders() == []
    assert [p for p in descendants(slow_server.proc.pid)
            if "nix" in open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace")] == []


def test_unreachable_channel_fails_fast_naming_the_url(tmp_path):
    from tests.server import Server
    srv = Server(str(tmp_path), NIXERY_CHANNEL="nixos-unstable", NIX_TIMEOUT="120").start()
    try:
        started = time.monotonic()
        r = requests.get(srv.url + "/v2/hello/manifests/latest")
        elapsed = time.monotonic() - started
    finally:
        srv.stop()
    assert r.status_code == 502
    err = error_of(r)
    assert err["code"] == "SOURCE_UNAVAILABLE"
    assert "https://channels.nixos.org/nixos-unstable/git-revision" in err["message"]
    assert elapsed < 60


@pytest.mark.parametrize("worker", ["registry", "gthread"])
def test_the_home_page_believes_https_from_a_trusted_proxy_only(worker, tmp_path):
    """gunicorn (and the registry's own reader) take the scheme from
    X-Forwarded-Proto of a peer in FORWARDED_ALLOW_IPS (127.0.0.1 here);
    a client at 127.0.0.2 claiming HTTPS gets the plain-HTTP commands."""
    from tests.app.test_web import pull_commands
    from tests.conftest import PKGS
    from tests.server import Server
    srv = Server(str(tmp_path), NIXERY_PKGS_PATH=str(PKGS), NIXERY_HTTP_WORKER=worker).start()
    try:
        trusted = requests.get(srv.url + "/", headers={"X-Forwarded-Proto": "https"}, timeout=30)
        assert f"podman pull {srv.host}/" in pull_commands(trusted.text)
        assert "tls-verify" not in trusted.text
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30,
                                          source_address=("127.0.0.2", 0))
        conn.request("GET", "/", headers={"X-Forwarded-Proto": "https"})
        spoofed = conn.getresponse().read().decode()
        conn.close()
        assert f"podman pull --tls-verify=false {srv.host}/" in pull_commands(spoofed)
    finally:
        srv.stop()
