"""Health, readiness and metrics through the Flask client."""
from prometheus_client.parser import text_string_to_metric_families


def sample(client, name, **labels):
    text = client.get("/metrics").get_data(as_text=True)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.get_data(as_text=True) == "ok\n"


def test_readyz(client):
    r = client.get("/readyz")
    body = r.get_json()
    assert r.status_code == 200 and body["ready"] is True
    assert body["checks"] == {"storage": "ok", "nix": "ok"}
    assert set(body["package_source"]) == {"reachable", "since", "checked_at", "last_error",
                                            "last_error_at", "describe"}


def test_readyz_fails_when_storage_does(app, client, monkeypatch):
    from storage.errors import StorageUnavailable

    def down(key):
        raise StorageUnavailable("bucket gone")
    monkeypatch.setattr(app.extensions["storage"], "exists", down)
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.get_json()["checks"]["storage"] == "failing: bucket gone"


def test_metrics_after_a_pull_show_the_build_and_the_cache_hit(client):
    builds = sample(client, "registry_builds_total", outcome="built")
    hits = sample(client, "registry_manifest_cache_total", result="memory")
    assert client.get("/v2/curl/manifests/latest").status_code == 200
    assert client.get("/v2/curl/manifests/latest").status_code == 200
    assert sample(client, "registry_builds_total", outcome="built") == builds + 1
    assert sample(client, "registry_manifest_cache_total", result="memory") == hits + 1
    assert sample(client, "registry_http_requests_total", route="registry.manifests",
                  method="GET", status="200") >= 2
    assert sample(client, "registry_stored_bytes_total") > 0
    assert sample(client, "registry_builds_in_flight") == 0


def test_request_id_is_echoed_or_made(client):
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    made = client.get("/healthz", headers={"X-Request-ID": "bad id\x01"}).headers["X-Request-ID"]
    assert made != "bad id\x01" and len(made) == 32


def _source_report(client, timeout=30):
    """/readyz once the background check of the source has answered."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        r = client.get("/readyz")
        source = r.get_json()["package_source"]
        if source["checked_at"] or time.monotonic() > deadline:
            return r, source
        time.sleep(0.1)


def test_readiness_reports_the_package_source(client):
    r, source = _source_report(client)
    assert r.status_code == 200 and r.get_json()["ready"] is True
    assert source["reachable"] is True and source["since"] and source["last_error"] is None
    assert "the local package set" in source["describe"]


def test_an_unreachable_source_is_reported_but_does_not_fail_readiness(tmp_path):
    import re
    from app import create_app
    from app.config import Config
    app = create_app(Config(channel="nixos-unstable", channel_url="http://127.0.0.1:9",
                            storage_path=str(tmp_path / "s")))
    client = app.test_client()
    r, source = _source_report(client)
    assert r.status_code == 200 and r.get_json()["ready"] is True
    assert source["reachable"] is False
    assert "http://127.0.0.1:9/nixos-unstable/git-revision" in source["last_error"]
    assert source["since"] and source["last_error_at"]
    # a pull says why it cannot be built, and /metrics has the gauge
    assert client.get("/v2/hello/manifests/latest").status_code == 502
    metrics = client.get("/metrics").get_data(as_text=True)
    assert re.search(r"^registry_package_source_up(\{[^}]*\})? 0\.0$", metrics, re.M)


def test_readiness_fails_at_once_when_gcs_does_not_answer(tmp_path, gcs_key):
    import os
    import time
    from app import create_app
    from app.config import Config
    from tests.conftest import PKGS
    from tests.gcs import Emulator
    os.makedirs(tmp_path / "gcs")
    emulator = Emulator(str(tmp_path / "gcs")).start()
    bucket = emulator.create_bucket()
    app = create_app(Config(pkgs_path=str(PKGS), storage_backend="gcs", bucket=bucket,
                            gcs_endpoint=emulator.url, google_credentials=gcs_key,
                            storage_path=str(tmp_path / "unused"), gcs_retry_seconds=30))
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    emulator.stop()
    started = time.monotonic()
    r = client.get("/readyz")
    assert r.status_code == 503 and time.monotonic() - started < 15
    body = r.get_json()
    assert body["ready"] is False and body["checks"]["storage"].startswith("failing: ")
    assert body["checks"]["nix"] == "ok"
    assert client.get("/healthz").status_code == 200  # alive all the same


def test_readyz_details_only_to_this_machine_and_signed_in_users(tmp_path, monkeypatch):
    import base64

    import bcrypt
    from app import create_app
    from app.config import Config
    from storage.errors import StorageUnavailable
    from tests.conftest import PKGS
    users = tmp_path / "htpasswd"
    users.write_text("alice:" + bcrypt.hashpw(b"wonderland", bcrypt.gensalt(4)).decode() + "\n")
    app = create_app(Config(pkgs_path=str(PKGS), storage_path=str(tmp_path / "s"),
                            htpasswd=str(users), tls_in_front=True))
    login = {"Authorization": "Basic " + base64.b64encode(b"alice:wonderland").decode()}
    wrong = {"Authorization": "Basic " + base64.b64encode(b"alice:guess").decode()}

    def readyz(peer, headers=None):
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = peer
        r = client.get("/readyz", headers=headers or {})
        return r.status_code, r.get_json()

    anonymous = [readyz("198.51.100.2"), readyz("198.51.100.2", wrong),
                 # nginx on this machine, forwarding a remote client
                 readyz("127.0.0.1", {"X-Forwarded-For": "198.51.100.2"})]
    for status, body in anonymous:
        assert status == 200
        assert body == {"ready": True, "checks": {"storage": "ok", "nix": "ok"},
                        "details": "for signed-in users, and callers on this machine"}
    for status, body in (readyz("127.0.0.1"), readyz("::1"), readyz("198.51.100.2", login),
                         readyz("127.0.0.1", dict(login, **{"X-Forwarded-For": "10.0.0.1"}))):
        assert status == 200 and str(PKGS) in body["package_source"]["describe"]

    def down(key):
        raise StorageUnavailable(f"{tmp_path}/s is on fire")
    monkeypatch.setattr(app.extensions["storage"], "exists", down)
    status, body = readyz("198.51.100.2")
    assert status == 503 and body["checks"] == {"storage": "failing", "nix": "ok"}
    assert str(tmp_path) not in str(body)
    status, body = readyz("127.0.0.1")
    assert status == 503 and body["checks"]["storage"] == f"failing: {tmp_path}/s is on fire"
