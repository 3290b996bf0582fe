"""The gunicorn worker (app/http/worker.py) on a real server: kept-alive
connections answered on their thread, no connection starved by a busy or
an idle one, a worker that stops keeps none, and every request answered
alike whether gunicorn or app/http/http1.py read it."""
from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import threading
import time

import pytest

from tests.conftest import PKGS
from tests.e2e.test_operators import samples
from tests.server import Server


@pytest.fixture
def one_thread(tmp_path):
    """One worker with one thread: any connection a thread keeps is one
    nobody else gets."""
    srv = Server(str(tmp_path), NIXERY_PKGS_PATH=str(PKGS),
                 GUNICORN_CMD_ARGS="--workers 1 --threads 1").start()
    yield srv
    srv.stop()


def get(conn, path="/v2/"):
    conn.request("GET", path)
    r = conn.getresponse()
    return r.status, r.read()


def waits_of_new_clients(server, count=5) -> list[float]:
    """How long each of `count` new clients, one after another, waited for /v2/."""
    waits = []
    for _ in range(count):
        other = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        started = time.monotonic()
        assert get(other) == (200, b"{}")
        waits.append(time.monotonic() - started)
        other.close()
    return waits


def test_a_long_run_of_requests_on_one_connection(one_thread):
    conn = http.client.HTTPConnection("127.0.0.1", one_thread.port, timeout=10)
    sock = None
    for i in range(200):
        assert get(conn) == (200, b"{}")
        sock = sock or conn.sock
        assert conn.sock is sock, f"the connection was closed after request {i}"
        if i % 40 == 0:
            time.sleep(0.2)  # quiet, as a client between pulls: its thread waits
    conn.close()
    assert "Traceback" not in one_thread.read_log()


def test_a_busy_connection_does_not_starve_another(one_thread):
    stop = threading.Event()
    busy_answers = []

    def busy():
        conn = http.client.HTTPConnection("127.0.0.1", one_thread.port, timeout=10)
        while not stop.is_set():
            busy_answers.append(get(conn)[0])
        conn.close()

    t = threading.Thread(target=busy)
    t.start()
    try:
        while len(busy_answers) < 50:  # it has the only thread now
            time.sleep(0.01)
        waits = waits_of_new_clients(one_thread)
    finally:
        stop.set()
        t.join()
    assert set(busy_answers) == {200}
    print("waits behind the busy client:", " ".join(f"{w:.3f}" for w in waits))
    # answering /v2/ takes about a millisecond; a client kept waiting for the
    # busy one's thread waits until it happens to pause
    assert max(waits) < 0.5, f"a second client waited {max(waits):.1f}s behind a busy one"


def test_a_client_closing_while_a_thread_waits_for_it(one_thread):
    for _ in range(20):
        conn = http.client.HTTPConnection("127.0.0.1", one_thread.port, timeout=10)
        assert get(conn) == (200, b"{}")
        conn.close()  # within the thread's wait for a next request
    conn = http.client.HTTPConnection("127.0.0.1", one_thread.port, timeout=10)
    assert get(conn) == (200, b"{}")
    conn.close()
    log = one_thread.read_log()
    assert "Traceback" not in log and "Error" not in log


def test_an_idle_connection_does_not_starve_another(one_thread):
    idle = http.client.HTTPConnection("127.0.0.1", one_thread.port, timeout=10)
    assert get(idle) == (200, b"{}")  # and then quiet, kept alive: the thread waits on it
    waits = waits_of_new_clients(one_thread)
    # the idle one was handed back to the poller, not closed
    assert get(idle) == (200, b"{}")
    idle.close()
    print("waits behind the idle client:", " ".join(f"{w:.3f}" for w in waits))
    # gunicorn keeps an idle connection 75 s (gunicorn.conf.py)
    assert max(waits) < 0.5, f"a second client waited {max(waits):.1f}s behind an idle one"


def test_a_stopping_server_does_not_wait_for_idle_connections(one_thread):
    idle = http.client.HTTPConnection("127.0.0.1", one_thread.port, timeout=10)
    assert get(idle) == (200, b"{}")
    started = time.monotonic()
    one_thread.proc.terminate()
    one_thread.proc.wait(30)
    # gunicorn's own 2 s for kept-alive connections of a stopping worker,
    # not the 75 s an idle connection is kept
    assert time.monotonic() - started < 10
    assert one_thread.proc.returncode == 0
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        get(idle)
    idle.close()


# The same requests, each alone on a new connection (gunicorn reads a
# connection's first request) and pipelined on one kept connection (plain
# ones then read by app/http/http1.py, the others by gunicorn): a client cannot
# tell which read it.
PIPELINED = [
    ("GET", "/v2/", ""),
    ("HEAD", "/v2/", ""),
    ("GET", "/v2/shell/manifests/not%20a%20tag", ""),
    ("GET", "/v2/no..such/blobs/sha256:" + "0" * 64, ""),
    ("GET", "/v2/_catalog?n=1", "Accept: application/json\r\nAccept: text/html\r\n"),
    ("POST", "/v2/shell/blobs/uploads/", "Content-Length: 5\r\n\r\nhello"),
    ("GET", "/v2/shell/tags/list?n=0", "X-Forwarded-Proto: https\r\n"),
    ("DELETE", "/v2/shell/manifests/latest", ""),
    ("GET", "/healthz", "If-None-Match: \"x\"\r\n"),
    ("GET", "/nothing/here", ""),
]


def _request(method, path, extra, close=False):
    head, _, body = extra.partition("\r\n\r\n")
    fields = head + ("\r\n" if head and not head.endswith("\r\n") else "")
    if close:
        fields += "Connection: close\r\n"
    return f"{method} {path} HTTP/1.1\r\nHost: registry\r\n{fields}\r\n{body}".encode()


def _answers(data: bytes, methods) -> list[tuple[bytes, dict, bytes]]:
    """Status lines, headers (but those of the moment) and bodies, in order."""
    answers = []
    for method in methods:
        head, _, data = data.partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        headers = dict(line.split(b": ", 1) for line in lines)
        length = 0 if method == "HEAD" else int(headers.get(b"Content-Length", 0))
        body, data = data[:length], data[length:]
        for moment in (b"Date", b"X-Request-ID", b"Connection"):
            headers.pop(moment, None)
        answers.append((status, headers, body))
    assert data == b""
    return answers


def _exchange(port, payload) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(payload)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_pipelined_requests_get_the_answers_they_get_alone(one_thread):
    methods = [m for m, _, _ in PIPELINED]
    alone = [_answers(_exchange(one_thread.port, _request(*r, close=True)), [r[0]])[0]
             for r in PIPELINED]
    payload = b"".join(_request(*r) for r in PIPELINED) + _request("GET", "/v2/", "", True)
    together = _answers(_exchange(one_thread.port, payload), methods + ["GET"])
    assert together[:-1] == alone
    assert together[-1] == alone[0]
    assert [status.split()[1] for status, _, _ in alone] == [
        b"200", b"200", b"400", b"400", b"404", b"405", b"200", b"405", b"200", b"404"]
    assert "Traceback" not in one_thread.read_log()


UNREADABLE = {
    "a header over gunicorn's limit": (b"GET /v2/ HTTP/1.1\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n",
                                       431),
    # gunicorn counts a field's CRLF: 8,189 characters and the CRLF are past its 8,190
    "a header just past gunicorn's limit": (b"GET /v2/ HTTP/1.1\r\nX-A: " + b"a" * 8184
                                            + b"\r\n\r\n", 431),
    "a request line over its limit": (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n", 414),
    "a header without a colon": (b"GET /v2/ HTTP/1.1\r\nBad Header\r\n\r\n", 400),
    "a control character": (b"GET /v2/ HTTP/1.1\r\nX-A: a\x01b\r\n\r\n", 400),
    "an unknown expectation": (b"GET /v2/ HTTP/1.1\r\nExpect: magic\r\n\r\n", 417),
    "an unknown transfer coding": (b"POST /v2/ HTTP/1.1\r\nTransfer-Encoding: zip\r\n\r\n", 501),
}


@pytest.mark.parametrize("raw, status", UNREADABLE.values(), ids=UNREADABLE.keys())
@pytest.mark.parametrize("after", [False, True], ids=["first request", "after a plain one"])
def test_a_request_gunicorn_cannot_read_gets_a_registry_error(one_thread, raw, status, after):
    payload = (_request("GET", "/v2/", "") if after else b"") + raw
    data = _exchange(one_thread.port, payload)
    if after:
        data = data.split(b"{}", 1)[1]  # the plain request's answer first
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0].split()[1] == str(status).encode()
    assert b"Content-Type: application/json" in lines and b"Connection: close" in lines
    [error] = json.loads(body)["errors"]
    assert error["code"] == "REQUEST_INVALID" and error["message"].startswith(
        "the request could not be read: ")
    assert b"<html" not in data.lower() and b"Traceback" not in data
    # logged and counted as every answer is, under the id it was sent with
    [rid] = [line.split(b": ", 1)[1].decode() for line in lines
             if line.lower().startswith(b"x-request-id: ")]
    want = f'"- -" {status} {len(body)} 0.0ms [{rid}]'
    end = time.monotonic() + 10
    while not any(want in line for line in one_thread.read_log().splitlines()):
        assert time.monotonic() < end, f"no access log line {want!r}"
        time.sleep(0.1)
    counted = samples(one_thread, "registry_http_requests_total")
    assert counted[(("method", "-"), ("route", "unreadable"), ("status", str(status)))] == 1


def _client_hello() -> bytes:
    """The first bytes a TLS client sends: a handshake record, ClientHello."""
    tls = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(),
                                                server_hostname="registry.example")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_a_tls_handshake_on_the_plain_port_is_one_info_line(one_thread):
    hello = _client_hello()
    assert hello[:2] == b"\x16\x03"
    data = _exchange(one_thread.port, hello)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")  # what Go's TLS client recognises
    [error] = json.loads(body)["errors"]
    assert error["message"].startswith("this registry speaks plain HTTP here, not HTTPS: pull "
                                       "with --tls-verify=false")
    end = time.monotonic() + 10
    while "TLS handshake from ip=127.0.0.1" not in one_thread.read_log():
        assert time.monotonic() < end
        time.sleep(0.1)
    lines = [l for l in one_thread.read_log().splitlines() if "/healthz" not in l]
    assert [l for l in lines if "TLS handshake" in l] == [
        next(l for l in lines if "TLS handshake" in l)]
    assert "[INFO] TLS handshake from ip=127.0.0.1 on this plain-HTTP port" in "\n".join(lines)
    assert not [l for l in lines if "WARNING" in l or '"- -"' in l or "Invalid request" in l]
    # and the connection after it, in plain HTTP, is answered as ever
    assert _exchange(one_thread.port, _request("GET", "/v2/", "", True)).endswith(b"{}")


def test_skopeo_probing_https_leaves_no_warning(tmp_path):
    from tests.conftest import need
    from tests.e2e.conftest import run
    need("skopeo")
    srv = Server(str(tmp_path / "srv"), NIXERY_PKGS_PATH=str(PKGS)).start()
    try:
        run(["skopeo", "inspect", "--tls-verify=false", f"docker://{srv.host}/hello:latest"])
        log = srv.read_log()
        probes = log.count("TLS handshake from ip=127.0.0.1 on this plain-HTTP port")
        print(log[-3000:])
        assert probes >= 1
        assert "WARNING" not in log and '"- -" 400' not in log and "Invalid request" not in log
    finally:
        srv.stop()


def _established_by_worker(srv) -> dict[int, int]:
    """How many of the server's established connections each worker holds,
    read off /proc (the workers are the master's children)."""
    with open(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children") as f:
        workers = [int(p) for p in f.read().split()]
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.read().splitlines()[1:]:
                fields = row.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == srv.port and fields[3] == "01":
                    inodes.add(fields[9])
    held = {}
    for pid in workers:
        fds = os.listdir(f"/proc/{pid}/fd")
        held[pid] = sum(1 for fd in fds
                        if _link(f"/proc/{pid}/fd/{fd}").removeprefix("socket:[")[:-1] in inodes)
    return held


def _link(path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def test_connections_opened_at_once_are_spread_over_the_workers(tmp_path):
    """A client opening its connections together (a pull's client, nginx in
    front) gets them on every worker alike, not most on one (a worker's
    Python uses one core at a time)."""
    srv = Server(str(tmp_path), NIXERY_PKGS_PATH=str(PKGS),
                 GUNICORN_CMD_ARGS="--workers 2").start()
    try:
        for _ in range(3):
            conns = [socket.create_connection(("127.0.0.1", srv.port), timeout=10)
                     for _ in range(8)]
            for conn in conns:
                conn.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            for conn in conns:
                assert conn.recv(65536).startswith(b"HTTP/1.1 200 ")
            held = _established_by_worker(srv)
            assert sum(held.values()) == 8 and len(held) == 2, held
            assert max(held.values()) - min(held.values()) <= 1, held
            for conn in conns:
                conn.close()
            deadline = time.monotonic() + 10
            while sum(_established_by_worker(srv).values()) and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        srv.stop()
