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
    assert r.status_code == 200 and r.get_json() == {"ready": True,
                                                     "checks": {"storage": "ok", "nix": "ok"}}


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
