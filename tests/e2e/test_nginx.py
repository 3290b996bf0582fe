"""The registry behind Debian's nginx with deploy/nginx.conf, as an operator
runs it: real clients pull through it, nginx answers from its cache what
the registry let it keep (with the registry's headers, ranges too) and
sends big blob files itself, and nothing is lost for it: credentials hold
for cached answers, a moved tag is seen within its expiry, errors are not
kept, a missing or corrupt blob is made again, what nginx answered is
counted in /metrics, and clients that trickle their headers wait in nginx
while other requests are served."""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from app import front, front_reports
from tests.app.test_auth import basic, entry
from tests.conftest import PKGS, package_set
from tests.e2e.conftest import run
from tests.e2e.test_clients import in_root, skopeo_copy, unpack
from tests.nginx import Nginx, open_folder
from tests.server import Server, free_port

DOCKER = "application/vnd.docker.distribution.manifest.v2+json"
ACCEL = "/_registry_blobs/"


@pytest.fixture(scope="module")
def fronted(tmp_path_factory):
    # nginx's workers (nobody) read the blob files: the storage is in a
    # folder anyone may enter, not under pytest's private ones
    work = tmp_path_factory.mktemp("nginx-front")
    shared = open_folder("registry-nginx-storage-")
    reports = os.path.join(shared, "front-reports")
    server = Server(str(work / "registry"), NIXERY_PKGS_PATH=str(PKGS), NIX_TIMEOUT="120",
                    NIXERY_BLOB_ACCEL=ACCEL, STORAGE_PATH=os.path.join(shared, "storage"),
                    NIXERY_FRONT_REPORTS=reports).start()
    nginx = Nginx(server.host, server.env["STORAGE_PATH"], reports=reports)
    yield server, nginx
    nginx.stop()
    server.stop()
    shutil.rmtree(shared, ignore_errors=True)


def test_clients_pull_through_nginx(fronted, tmp_path, podman):
    server, nginx = fronted
    skopeo_copy(nginx, "shell/hello", tmp_path / "oci")
    rootfs = unpack(tmp_path / "oci", tmp_path / "bundle")
    assert in_root(rootfs, "hello") == "Hello, world!\n"
    image = f"{nginx.host}/shell/hello:latest"
    run(podman + ["pull", "--tls-verify=false", image])
    out = run(podman + ["run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024",
                        "--ulimit", "nproc=1024:1024", image, "hello"]).stdout
    assert out == "Hello, world!\n"
    # the blobs went out through nginx, as the registry's access log says,
    # sent by workers running as nginx's default user, not root
    assert '"GET /v2/shell/hello/blobs/sha256:' in server.read_log()
    assert nginx.workers() == {"nobody"}


def test_an_nginx_of_another_user_than_root_serves_pulls(fronted, tmp_path):
    """Its pid file, temporary files and error log are where such a user
    can write them; the blobs are readable by it."""
    server, _ = fronted
    nginx = Nginx(server.host, server.env["STORAGE_PATH"], as_user="nobody")
    try:
        assert nginx.workers() == {"nobody"}
        skopeo_copy(nginx, "shell/hello", tmp_path / "oci")
        rootfs = unpack(tmp_path / "oci", tmp_path / "bundle")
        assert in_root(rootfs, "hello") == "Hello, world!\n"
        assert "[emerg]" not in nginx.read_errors() and "[alert]" not in nginx.read_errors()
    finally:
        nginx.stop()


def test_nginx_passes_on_what_it_saw_not_what_the_client_wrote(fronted):
    server, nginx = fronted
    page = requests.get(nginx.url + "/", headers={
        "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https", "Forwarded": "for=203.0.113.9;host=evil.example",
        "X-Request-ID": "nginx-e2e-forwarded"})
    assert page.status_code == 200
    assert "evil.example" not in page.text and f"{nginx.host}/shell/git/htop" in page.text
    line = server.log_line("[nginx-e2e-forwarded]")
    assert line.startswith("127.0.0.1 ") and "203.0.113.9" not in line


def _largest_layer(nginx, name):
    manifest = requests.get(f"{nginx.url}/v2/{name}/manifests/latest",
                            headers={"Accept": DOCKER}).json()
    return max(manifest["layers"], key=lambda l: l["size"])


def test_small_blobs_are_kept_by_nginx_with_the_registrys_headers_and_ranges(fronted):
    server, nginx = fronted
    layer = _largest_layer(nginx, "git")
    assert layer["size"] <= front.CACHED_BLOB_MAX
    url = f"{nginx.url}/v2/git/blobs/{layer['digest']}"
    before = server.read_log()
    whole = requests.get(url, headers={"X-Request-ID": "nginx-e2e-1"})
    assert whole.status_code == 200 and len(whole.content) == layer["size"]
    assert "sha256:" + hashlib.sha256(whole.content).hexdigest() == layer["digest"]
    _registry_headers(whole, layer["digest"])
    assert whole.headers["X-Request-ID"] == "nginx-e2e-1"
    # nginx answers again from what it kept
    again = requests.get(url, headers={"X-Request-ID": "nginx-e2e-2"})
    assert again.content == whole.content
    _registry_headers(again, layer["digest"])
    part = requests.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == whole.content[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{layer['size']}"
    assert part.headers["Docker-Content-Digest"] == layer["digest"]
    _each_header_once(part)
    head = requests.head(url)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(layer["size"])
    _registry_headers(head, layer["digest"])
    same = requests.get(url, headers={"If-None-Match": f'"{layer["digest"]}"'})
    assert same.status_code == 304
    # under another name, the same blob is the same kept answer
    other = requests.get(f"{nginx.url}/v2/shell/blobs/{layer['digest']}",
                         headers={"X-Request-ID": "nginx-e2e-3"})
    assert other.content == whole.content
    time.sleep(1)
    # the registry sent it once at most (this nginx may have fetched it
    # for another test), and these not at all
    log = server.read_log()[len(before):]
    assert all(f"[nginx-e2e-{n}]" not in log for n in (2, 3))
    sent = [l for l in log.splitlines() if f"/blobs/{layer['digest']}\"" in l]
    assert len(sent) <= 1, sent
    missing = requests.get(f"{nginx.url}/v2/git/blobs/sha256:{'0' * 64}")
    assert missing.status_code == 404 and missing.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


def _registry_headers(response, digest):
    assert response.headers["Docker-Content-Digest"] == digest
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert response.headers["ETag"] == f'"{digest}"'
    assert response.headers["Cache-Control"] == "max-age=31536000, immutable"
    assert response.headers["Accept-Ranges"] == "bytes"
    assert "X-Accel-Redirect" not in response.headers and front.EXPIRES not in response.headers
    _each_header_once(response)


def _each_header_once(response):
    """nginx keeps some of the registry's headers on an X-Accel-Redirect and
    adds its own: none may come twice (a client would read `bytes, bytes`)."""
    raw = response.raw.headers
    twice = {name: raw.getlist(name) for name in raw if len(raw.getlist(name)) > 1}
    assert not twice, twice


def test_big_blobs_are_sent_by_nginx_after_the_registrys_check_each_time(fronted):
    """Over CACHED_BLOB_MAX, nginx sends the storage file itself, after the
    registry checked it; a file damaged on disk is made again, not sent."""
    server, nginx = fronted
    layer = _largest_layer(nginx, "bigfile")
    assert layer["size"] > front.CACHED_BLOB_MAX
    url = f"{nginx.url}/v2/bigfile/blobs/{layer['digest']}"
    for n in (1, 2):
        whole = requests.get(url, headers={"X-Request-ID": f"nginx-e2e-big-{n}"})
        assert whole.status_code == 200
        assert "sha256:" + hashlib.sha256(whole.content).hexdigest() == layer["digest"]
        _registry_headers(whole, layer["digest"])
        # the registry checked it and sent no bytes of it: nginx did
        line = server.log_line(f"[nginx-e2e-big-{n}]")
        assert f'"GET /v2/bigfile/blobs/{layer["digest"]}" 200 0 ' in line
    part = requests.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == whole.content[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{layer['size']}"
    _each_header_once(part)
    head = requests.head(url)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(layer["size"])
    _each_header_once(head)
    # the registry checked this file, then it was cut short on disk: nginx
    # is not sent to it, it is made again
    path = os.path.join(server.env["STORAGE_PATH"], "layers", layer["digest"])
    with open(path, "r+b") as f:
        f.truncate(layer["size"] // 2)
    again = requests.get(url)
    assert again.status_code == 200
    assert "sha256:" + hashlib.sha256(again.content).hexdigest() == layer["digest"]


def test_a_missing_blob_is_made_again_behind_nginx(fronted):
    server, nginx = fronted
    manifest = requests.get(f"{nginx.url}/v2/htop/manifests/latest", headers={"Accept": DOCKER})
    # one that no nginx has fetched (and kept) yet
    layer = next(l for l in manifest.json()["layers"] if l["digest"] not in server.read_log())
    path = os.path.join(server.env["STORAGE_PATH"], "layers", layer["digest"])
    os.unlink(path)
    again = requests.get(f"{nginx.url}/v2/htop/blobs/{layer['digest']}")
    assert again.status_code == 200
    assert "sha256:" + hashlib.sha256(again.content).hexdigest() == layer["digest"]
    assert os.path.exists(path)


def test_errors_are_not_kept(fronted):
    server, nginx = fronted
    for path in ("/v2/nosuchpackage/manifests/latest", "/v2/hello/manifests/no:such",
                 f"/v2/hello/blobs/sha256:{'1' * 64}", "/v2/hello/tags/list?n=x"):
        for n in (1, 2):
            rid = f"nginx-e2e-error-{uuid.uuid4().hex[:8]}"
            r = requests.get(nginx.url + path, headers={"X-Request-ID": rid})
            assert 400 <= r.status_code < 500 and r.json()["errors"]
            assert r.headers["X-Request-ID"] == rid  # the registry's answer, each time
            server.log_line(f"[{rid}]")


def _metric(nginx, name, **labels):
    want = name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    for line in requests.get(nginx.url + "/metrics").text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture(scope="module")
def udp_fronted(fronted, tmp_path_factory):
    """The same storage behind another registry and an nginx that reports
    over UDP, as one on another machine would."""
    server, _ = fronted
    reports = f"127.0.0.1:{free_port()}"
    udp = Server(str(tmp_path_factory.mktemp("nginx-udp")), NIXERY_PKGS_PATH=str(PKGS),
                 NIX_TIMEOUT="120", NIXERY_BLOB_ACCEL=ACCEL,
                 STORAGE_PATH=server.env["STORAGE_PATH"], NIXERY_FRONT_REPORTS=reports).start()
    nginx = Nginx(udp.host, udp.env["STORAGE_PATH"], reports=reports)
    yield udp, nginx
    nginx.stop()
    udp.stop()


@pytest.mark.parametrize("how", ["file", "udp"])
def test_what_nginx_answers_from_its_cache_is_counted(how, request):
    server, nginx = request.getfixturevalue("fronted" if how == "file" else "udp_fronted")
    manifest = requests.get(f"{nginx.url}/v2/shell/hello/manifests/latest",
                            headers={"Accept": DOCKER})
    layer = min(manifest.json()["layers"], key=lambda l: l["size"])
    url = f"{nginx.url}/v2/shell/hello/blobs/{layer['digest']}"
    by_digest = f"{nginx.url}/v2/shell/hello/manifests/{manifest.headers['Docker-Content-Digest']}"
    requests.get(url)  # kept from now on, if they were not
    requests.get(by_digest)
    time.sleep(front_reports.FLUSH_SECONDS + 1)  # their own counts, if they were, are in
    manifests_before = _metric(nginx, "registry_served_bytes_total", kind="manifest")
    labels = dict(route="registry.blobs", method="GET", status="200")
    requests_before = _metric(nginx, "registry_http_requests_total", **labels)
    heads_before = _metric(nginx, "registry_http_requests_total", route="registry.blobs",
                           method="HEAD", status="200")
    bytes_before = _metric(nginx, "registry_served_bytes_total", kind="blob")
    before = server.read_log()
    for _ in range(5):
        assert requests.get(url).status_code == 200
        assert requests.head(url).status_code == 200
    for _ in range(3):
        assert requests.get(by_digest).content == manifest.content
    end = time.monotonic() + 10
    while _metric(nginx, "registry_http_requests_total", **labels) < requests_before + 5:
        assert time.monotonic() < end, "nginx's answers were not counted"
        time.sleep(0.2)
    time.sleep(2)  # and no more than they were
    assert _metric(nginx, "registry_http_requests_total", **labels) == requests_before + 5
    assert _metric(nginx, "registry_http_requests_total", route="registry.blobs",
                   method="HEAD", status="200") == heads_before + 5
    assert _metric(nginx, "registry_served_bytes_total", kind="blob") == (
        bytes_before + 5 * layer["size"])
    assert _metric(nginx, "registry_served_bytes_total", kind="manifest") == (
        manifests_before + 3 * len(manifest.content))
    # nginx answered them: the registry saw none
    assert layer["digest"] not in server.read_log()[len(before):]
    assert "[alert]" not in nginx.read_errors() and "[error]" not in nginx.read_errors()
    if how == "file":  # what was counted is freed: no line is left to read
        with open(server.env["NIXERY_FRONT_REPORTS"], "rb") as f:
            assert f.read().strip(b"\0") == b""


@pytest.fixture(scope="module")
def locked_front(tmp_path_factory):
    """A registry that wants credentials, on a package set of its own that
    a test may change, read again at every pull."""
    work = tmp_path_factory.mktemp("nginx-locked")
    htpasswd = work / "htpasswd"
    htpasswd.write_text(entry("alice", "wonderland") + entry("bob", "builder"))
    pkgs = package_set(work / "pkgs")
    shared = open_folder("registry-nginx-locked-")
    reports = os.path.join(shared, "front-reports")
    server = Server(str(work / "registry"), NIXERY_PKGS_PATH=pkgs, NIX_TIMEOUT="120",
                    NIXERY_BLOB_ACCEL=ACCEL, STORAGE_PATH=os.path.join(shared, "storage"),
                    NIXERY_FRONT_REPORTS=reports, NIXERY_HTPASSWD=str(htpasswd),
                    NIXERY_TLS_IN_FRONT="1", NIXERY_SOURCE_REFRESH="0",
                    # one worker: failures are counted per worker process
                    GUNICORN_CMD_ARGS="--workers 1").start()
    nginx = Nginx(server.host, server.env["STORAGE_PATH"], reports=reports)
    yield server, nginx, pkgs
    nginx.stop()
    server.stop()
    shutil.rmtree(shared, ignore_errors=True)


def test_credentials_hold_for_what_nginx_kept(locked_front, tmp_path):
    server, nginx, _ = locked_front
    alice = basic("alice", "wonderland")
    run(["skopeo", "copy", "--src-tls-verify=false", "--src-creds", "alice:wonderland",
         f"docker://{nginx.host}/shell/hello:latest", f"oci:{tmp_path / 'oci'}:latest"])
    rootfs = unpack(tmp_path / "oci", tmp_path / "bundle")
    assert in_root(rootfs, "hello") == "Hello, world!\n"
    manifest = requests.get(f"{nginx.url}/v2/shell/hello/manifests/latest",
                            headers={"Accept": DOCKER, **alice})
    assert manifest.status_code == 200
    blob = f"{nginx.url}/v2/shell/hello/blobs/{manifest.json()['layers'][0]['digest']}"
    assert requests.get(blob, headers=alice).status_code == 200  # kept by now
    manifest_url = f"{nginx.url}/v2/shell/hello/manifests/latest"
    for url in (blob, manifest_url):
        for method in ("GET", "HEAD"):
            for headers in ({}, basic("alice", "wrong"), basic("mallory", "x")):
                r = requests.request(method, url, headers={"Accept": DOCKER, **headers})
                assert r.status_code == 401, (method, url, headers)
                assert r.headers["WWW-Authenticate"] == 'Basic realm="registry", charset="UTF-8"'
                assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
                if method == "GET":
                    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    # the pages and /metrics still ask for them too
    assert requests.get(nginx.url + "/").status_code == 401
    assert requests.get(nginx.url + "/metrics").status_code == 401


def test_a_lockout_holds_through_nginx_and_counts_each_failure_once(locked_front):
    server, nginx, _ = locked_front
    url = f"{nginx.url}/v2/hello/manifests/latest"
    assert requests.get(url, headers=basic("bob", "builder")).status_code == 200
    statuses = [requests.get(url, headers=basic("bob", "wrong")).status_code for _ in range(11)]
    assert statuses == [401] * 10 + [429]
    locked = requests.get(url, headers=basic("bob", "wrong"))
    assert locked.status_code == 429 and locked.headers["Retry-After"]
    assert locked.json()["errors"][0]["code"] == "TOOMANYREQUESTS"


def test_a_moved_tag_is_seen_within_its_expiry(locked_front):
    server, nginx, pkgs = locked_front
    url = f"{nginx.url}/v2/hello/manifests/latest"
    alice = {"Accept": DOCKER, **basic("alice", "wonderland")}
    first = requests.get(url, headers=alice)
    assert first.status_code == 200
    package_set(pkgs, [('echo "Hello, world!"', f'echo "moved {uuid.uuid4().hex}"')])
    # nginx counts whole seconds: an answer kept 2 s may be served for 3
    time.sleep(front.TAG_SECONDS + 1.5)
    moved = requests.get(url, headers=alice)
    assert moved.status_code == 200
    assert moved.headers["Docker-Content-Digest"] != first.headers["Docker-Content-Digest"]
    assert moved.content != first.content
    # and the kept manifest is the moved one, not the one before it
    assert requests.get(url, headers=alice).content == moved.content


def test_clients_trickling_headers_wait_in_nginx_not_in_the_registry(fronted):
    """64 connections that send a header line a second, while probes are
    answered: gunicorn's threads never see the slow ones."""
    server, nginx = fronted
    stop = threading.Event()
    sockets = []

    def trickle():
        s = socket.create_connection(("127.0.0.1", nginx.port), timeout=30)
        sockets.append(s)
        s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        n = 0
        while not stop.wait(1):
            try:
                s.sendall(f"X-Slow-{n}: a\r\n".encode())
            except OSError:
                return
            n += 1

    slow = [threading.Thread(target=trickle, daemon=True) for _ in range(64)]
    for t in slow:
        t.start()
    try:
        time.sleep(2)  # all of them are in the middle of their headers

        def probe(_):
            started = time.monotonic()
            r = requests.get(f"{nginx.url}/v2/", timeout=5)
            return r.status_code, time.monotonic() - started
        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(probe, range(10)))
        assert all(status == 200 for status, _ in answers), answers
        assert max(seconds for _, seconds in answers) < 5
    finally:
        stop.set()
        for s in sockets:
            s.close()
