"""Who the client is, behind Debian's nginx with deploy/nginx.conf, the
registry trusting the proxy as a range (FORWARDED_ALLOW_IPS=127.0.0.0/8)
and asking for credentials: logins locked out per client and user, the
access log naming the forwarded client, a missing login told apart from a
wrong one, and readiness details kept from anonymous forwarded callers.

nginx listens on 127.0.0.1 and on ::1, so that one of its clients (::1)
is outside the trusted range, as a remote client is: what X-Forwarded-For
says about it is believed only as far as trusted proxies wrote it."""
from __future__ import annotations

import http.client
import json
import time
import uuid

import pytest

from tests.conftest import PKGS, need
from tests.e2e.conftest import run
from tests.nginx import Nginx
from tests.server import Server

WRITTEN_BY_THE_CLIENT = "203.0.113.66"


@pytest.fixture(scope="module")
def fronted(tmp_path_factory):
    need("htpasswd")
    work = tmp_path_factory.mktemp("behind-a-proxy")
    users = work / "htpasswd"
    run(["htpasswd", "-B", "-b", "-c", str(users), "alice", "wonderland"])
    run(["htpasswd", "-B", "-b", str(users), "bob", "builder"])
    # one worker: each worker process counts failed logins of its own
    server = Server(str(work / "registry"), NIXERY_PKGS_PATH=str(PKGS),
                    NIXERY_HTPASSWD=str(users), NIXERY_TLS_IN_FRONT="1",
                    FORWARDED_ALLOW_IPS="127.0.0.0/8",
                    GUNICORN_CMD_ARGS="--workers 1").start()
    try:
        nginx = Nginx(server.host, server.env["STORAGE_PATH"], also=["[::1]"])
    except RuntimeError:
        server.stop()
        raise
    yield server, nginx
    nginx.stop()
    server.stop()


def ask(nginx, path, *, via="::1", source=None, auth=None):
    """A request through nginx from `via` (its ::1 or its 127.0.0.1
    listener, from `source`): status, headers, body and the request id.
    From ::1, the client writes an X-Forwarded-For of its own (a client in
    the trusted range would be believed about it)."""
    conn = http.client.HTTPConnection(via, nginx.port, timeout=30,
                                      source_address=(source, 0) if source else None)
    rid = uuid.uuid4().hex
    sent = {"X-Request-ID": rid}
    if via == "::1":
        sent["X-Forwarded-For"] = WRITTEN_BY_THE_CLIENT
    if auth:
        import base64
        sent["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    try:
        conn.request("GET", path, headers=sent)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read(), rid
    finally:
        conn.close()


def access_line(server, rid, timeout=10) -> str:
    end = time.monotonic() + timeout
    while True:
        lines = [line for line in server.read_log().splitlines() if f"[{rid}]" in line
                 and '"GET ' in line]
        if lines or time.monotonic() > end:
            assert lines, f"no access log line for {rid}"
            return lines[-1]
        time.sleep(0.1)


def test_failed_logins_of_one_forwarded_client_lock_out_no_other(fronted):
    server, nginx = fronted
    statuses = [ask(nginx, "/v2/", auth=("alice", f"guess{i}"))[0] for i in range(40)]
    assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}
    status, _, body, _ = ask(nginx, "/v2/", auth=("alice", "wonderland"))
    assert status == 429 and b"too many failed logins as 'alice' from ::1" in body
    # alice from another client of the same proxy logs in, and so does
    # bob from the client that failed
    assert ask(nginx, "/v2/", via="127.0.0.1", source="127.0.0.2",
               auth=("alice", "wonderland"))[0] == 200
    assert ask(nginx, "/v2/", auth=("bob", "builder"))[0] == 200


def test_the_access_log_names_the_forwarded_client(fronted):
    server, nginx = fronted
    _, _, _, rid = ask(nginx, "/v2/", auth=("bob", "builder"))
    line = access_line(server, rid)
    assert line.startswith('::1 bob "GET /v2/" 200 '), line
    # a client in the trusted range is the client too, not its proxy
    _, _, _, rid = ask(nginx, "/v2/", via="127.0.0.1", source="127.0.0.3",
                       auth=("bob", "builder"))
    line = access_line(server, rid)
    assert line.startswith('127.0.0.3 bob "GET /v2/" 200 '), line
    log = server.read_log()
    assert WRITTEN_BY_THE_CLIENT not in log


def test_no_credentials_is_asked_to_log_in_not_told_it_is_wrong(fronted):
    server, nginx = fronted
    for auth in (None, ("", "")):
        status, headers, body, _ = ask(nginx, "/v2/", via="127.0.0.1", auth=auth)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic ")
        [error] = json.loads(body)["errors"]
        assert error["code"] == "UNAUTHORIZED"
        assert error["message"].startswith("authentication required: log in")
    status, _, body, _ = ask(nginx, "/v2/", via="127.0.0.1", auth=("bob", "guess"))
    assert status == 401
    assert json.loads(body)["errors"][0]["message"] == "wrong user name or password"


def test_readiness_details_are_not_for_anonymous_forwarded_callers(fronted):
    server, nginx = fronted
    status, _, body, _ = ask(nginx, "/readyz")
    assert status == 200
    assert json.loads(body) == {"ready": True, "checks": {"storage": "ok", "nix": "ok"},
                                "details": "for signed-in users, and callers on this machine"}
    assert str(PKGS).encode() not in body and server.workdir.encode() not in body
    # nginx is on this machine, yet forwards the client: no details either
    assert b"package_source" not in ask(nginx, "/readyz", via="127.0.0.1")[2]
    signed_in = json.loads(ask(nginx, "/readyz", auth=("bob", "builder"))[2])
    assert str(PKGS) in signed_in["package_source"]["describe"]
    # a caller on this machine itself, to gunicorn directly
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/readyz")
    local = json.loads(conn.getresponse().read())
    conn.close()
    assert str(PKGS) in local["package_source"]["describe"]
