"""What an operator's tools read from a real gunicorn server."""
from __future__ import annotations

import json

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PKGS
from tests.server import Server


def samples(server, name):
    text = requests.get(server.url + "/metrics").text
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name}


def test_metrics_add_up_across_workers(tmp_path):
    srv = Server(str(tmp_path), NIXERY_PKGS_PATH=str(PKGS)).start()
    try:
        for _ in range(6):
            assert requests.get(srv.url + "/v2/hello/manifests/latest").status_code == 200
        layer = requests.get(srv.url + "/v2/hello/manifests/latest").json()["layers"][0]
        blob_url = f"{srv.url}/v2/hello/blobs/{layer['digest']}"
        for _ in range(3):
            assert len(requests.get(blob_url).content) == layer["size"]
        assert requests.head(blob_url).status_code == 200
        # whichever worker answers the scrape, it reports every worker's counts
        for _ in range(6):
            builds = samples(srv, "registry_builds_total")
            assert builds[(("outcome", "built"),)] == 1
            cache = samples(srv, "registry_manifest_cache_total")
            assert cache[(("result", "miss"),)] == 1
            assert sum(v for k, v in cache.items() if k != (("result", "miss"),)) == 6
            requests_ = samples(srv, "registry_http_requests_total")
            key = (("method", "GET"), ("route", "registry.manifests"), ("status", "200"))
            assert requests_[key] == 7
            blobs = (("route", "registry.blobs"), ("status", "200"))
            assert requests_[(("method", "GET"),) + blobs] == 3
            assert requests_[(("method", "HEAD"),) + blobs] == 1
            assert samples(srv, "registry_served_bytes_total")[(("kind", "blob"),)] == 3 * layer["size"]
    finally:
        srv.stop()


def test_json_logs_carry_the_request_id_through_nix_output(tmp_path):
    srv = Server(str(tmp_path), NIXERY_PKGS_PATH=str(PKGS), LOG_FORMAT="json").start()
    try:
        r = requests.get(srv.url + "/v2/broken/manifests/latest",
                         headers={"X-Request-ID": "req-abc-1", "X-Forwarded-For": "203.0.113.7"})
        assert r.status_code == 422 and r.headers["X-Request-ID"] == "req-abc-1"
        layer = requests.get(srv.url + "/v2/hello/manifests/latest").json()["layers"][0]
        blob_path = f"/v2/hello/blobs/{layer['digest']}"
        r = requests.get(srv.url + blob_path, headers={"X-Request-ID": "req-blob-2"})
        assert r.status_code == 200 and r.headers["X-Request-ID"] == "req-blob-2"
    finally:
        srv.stop()
    events = [json.loads(line) for line in srv.read_log().splitlines() if line.strip()]
    ours = [e for e in events if e.get("request_id") == "req-abc-1"]
    loggers = {e.get("logger") for e in ours}
    assert {"builders.jobs.builds", "builders.nixbuild.nix.output", "access"} <= loggers
    nix_lines = [e["message"] for e in ours if e["logger"] == "builders.nixbuild.nix.output"]
    assert any("fails to build on purpose" in m for m in nix_lines)
    access = next(e for e in ours if e["logger"] == "access")
    assert access["client"] == "203.0.113.7" and access["status"] == 422
    assert access["path"] == "/v2/broken/manifests/latest"
    blob_access = [e for e in events if e.get("request_id") == "req-blob-2"]
    assert [(e["logger"], e["path"], e["status"], e["bytes"]) for e in blob_access] == [
        ("access", blob_path, 200, layer["size"])]
