"""The registry behind Debian's nginx with deploy/nginx.conf, as an operator
runs it: real clients pull through it, nginx sends blob bytes (ranges too)
with the registry's headers, a missing or corrupt blob is made again, and
clients that trickle their headers wait in nginx while other requests are
served."""
from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import PKGS, ROOT, need
from tests.e2e.conftest import run
from tests.e2e.test_clients import in_root, skopeo_copy, unpack
from tests.server import Local, Server, free_port, stop_process, wait_ready

DOCKER = "application/vnd.docker.distribution.manifest.v2+json"
ACCEL = "/_registry_blobs/"


class Nginx(Local):
    """deploy/nginx.conf on 127.0.0.1 (and `also` other local addresses, on
    the same port, e.g. `[::1]`)."""

    def __init__(self, workdir, upstream, storage_root, also=()):
        need("nginx")
        self.port = free_port()
        self.dir = workdir
        os.makedirs(workdir, exist_ok=True)
        conf = (ROOT / "deploy" / "nginx.conf").read_text()
        listen = " ".join(f"listen {a}:{self.port};" for a in ("127.0.0.1", *also))
        for old, new in (("listen 80;", listen),
                         ("server 127.0.0.1:8080;", f"server {upstream};"),
                         ("alias /var/lib/registry/storage/;", f"alias {storage_root}/;")):
            assert old in conf, old
            conf = conf.replace(old, new)
        self.conf = os.path.join(workdir, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        self.error_log = os.path.join(workdir, "error.log")
        # this machine's: a pid file and error log of its own, and workers as
        # root so that they read the test's storage folder
        self.proc = subprocess.Popen(
            ["nginx", "-p", workdir, "-c", self.conf, "-e", self.error_log,
             "-g", f"daemon off; pid {workdir}/nginx.pid; user root;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        if not wait_ready(self.proc, lambda: _answers(self.url + "/healthz"), 20):
            self.stop()
            raise RuntimeError(f"nginx did not start:\n{self.read_errors()}")

    def read_errors(self):
        try:
            with open(self.error_log) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def stop(self):
        stop_process(self.proc, 10)


def _answers(url):
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def fronted(tmp_path_factory):
    work = tmp_path_factory.mktemp("nginx-front")
    server = Server(str(work / "registry"), NIXERY_PKGS_PATH=str(PKGS), NIX_TIMEOUT="120",
                    NIXERY_BLOB_ACCEL=ACCEL).start()
    nginx = Nginx(str(work / "nginx"), server.host, server.env["STORAGE_PATH"])
    yield server, nginx
    nginx.stop()
    server.stop()


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
    # the blobs went out through nginx, as the registry's access log says
    assert '"GET /v2/shell/hello/blobs/sha256:' in server.read_log()


def _largest_layer(nginx, name):
    manifest = requests.get(f"{nginx.url}/v2/{name}/manifests/latest",
                            headers={"Accept": DOCKER}).json()
    return max(manifest["layers"], key=lambda l: l["size"])


def test_blobs_through_nginx_keep_the_registrys_headers_and_ranges(fronted):
    server, nginx = fronted
    layer = _largest_layer(nginx, "git")
    url = f"{nginx.url}/v2/git/blobs/{layer['digest']}"
    whole = requests.get(url, headers={"X-Request-ID": "nginx-e2e-1"})
    assert whole.status_code == 200 and len(whole.content) == layer["size"]
    assert "sha256:" + hashlib.sha256(whole.content).hexdigest() == layer["digest"]
    assert whole.headers["Docker-Content-Digest"] == layer["digest"]
    assert whole.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert whole.headers["X-Request-ID"] == "nginx-e2e-1"
    assert whole.headers["ETag"] == f'"{layer["digest"]}"'
    assert "X-Accel-Redirect" not in whole.headers
    assert whole.headers["Cache-Control"] == "max-age=31536000, immutable"
    assert whole.headers["Accept-Ranges"] == "bytes"
    _each_header_once(whole)
    # the registry checked it and sent no bytes of it: nginx did
    line = next(l for l in server.read_log().splitlines() if "[nginx-e2e-1]" in l)
    assert f'"GET /v2/git/blobs/{layer["digest"]}" 200 0 ' in line
    part = requests.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == whole.content[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{layer['size']}"
    assert part.headers["Docker-Content-Digest"] == layer["digest"]
    _each_header_once(part)
    head = requests.head(url)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(layer["size"])
    _each_header_once(head)
    same = requests.get(url, headers={"If-None-Match": f'"{layer["digest"]}"'})
    assert same.status_code == 304
    missing = requests.get(f"{nginx.url}/v2/git/blobs/sha256:{'0' * 64}")
    assert missing.status_code == 404 and missing.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


def _each_header_once(response):
    """nginx keeps some of the registry's headers on an X-Accel-Redirect and
    adds its own: none may come twice (a client would read `bytes, bytes`)."""
    raw = response.raw.headers
    twice = {name: raw.getlist(name) for name in raw if len(raw.getlist(name)) > 1}
    assert not twice, twice


def test_a_missing_or_corrupt_blob_is_made_again_behind_nginx(fronted):
    server, nginx = fronted
    layer = _largest_layer(nginx, "htop")
    path = os.path.join(server.env["STORAGE_PATH"], "layers", layer["digest"])
    os.unlink(path)
    again = requests.get(f"{nginx.url}/v2/htop/blobs/{layer['digest']}")
    assert again.status_code == 200
    assert "sha256:" + hashlib.sha256(again.content).hexdigest() == layer["digest"]
    assert os.path.exists(path)
    # the registry checked this file, then it was cut short on disk: nginx
    # is not sent to it, it is made again
    with open(path, "r+b") as f:
        f.truncate(layer["size"] // 2)
    again = requests.get(f"{nginx.url}/v2/htop/blobs/{layer['digest']}")
    assert again.status_code == 200
    assert "sha256:" + hashlib.sha256(again.content).hexdigest() == layer["digest"]


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
