"""What the registry does for the caching nginx in front: the answers it
lets nginx keep, and its yes or no to credentials (the counting of what
nginx answered alone: tests/app/test_front_reports.py)."""
import pytest

from app import create_app, front
from app.config import Config
from tests.app.test_auth import basic, entry
from tests.conftest import PKGS

DOCKER = "application/vnd.docker.distribution.manifest.v2+json"


# --- what nginx may keep -------------------------------------------------

def test_cached_answers_say_how_long_and_nothing_else_does(client):
    by_tag = client.get("/v2/hello/manifests/latest", headers={"Accept": DOCKER})
    assert by_tag.status_code == 200
    assert by_tag.headers[front.EXPIRES] == str(front.TAG_SECONDS)
    digest = by_tag.headers["Docker-Content-Digest"]
    by_digest = client.get(f"/v2/hello/manifests/{digest}")
    assert by_digest.headers[front.EXPIRES] == str(front.DIGEST_SECONDS)
    layer = by_tag.get_json()["layers"][0]["digest"]
    blob = client.get(f"/v2/hello/blobs/{layer}")
    assert blob.status_code == 200 and blob.headers[front.EXPIRES] == str(front.BLOB_SECONDS)
    # never: ranges, 304s, errors
    part = client.get(f"/v2/hello/blobs/{layer}", headers={"Range": "bytes=0-9"})
    same = client.get(f"/v2/hello/blobs/{layer}", headers={"If-None-Match": f'"{layer}"'})
    same_manifest = client.get("/v2/hello/manifests/latest",
                               headers={"Accept": DOCKER, "If-None-Match": f'"{digest}"'})
    missing = client.get(f"/v2/hello/blobs/sha256:{'0' * 64}")
    unknown = client.get("/v2/nosuchpackage/manifests/latest")
    bad = client.get("/v2/hello/manifests/no:such")
    assert [r.status_code for r in (part, same, same_manifest, missing, unknown, bad)] == [
        206, 304, 304, 404, 404, 400]
    for r in (part, same, same_manifest, missing, unknown, bad):
        assert front.EXPIRES not in r.headers


def test_a_manifest_by_digest_is_kept_no_longer_than_pulls_mark(tmp_path):
    # a retention of a day marks every 6 hours; of 0.01 days, every 216 s
    app = create_app(Config(pkgs_path=str(PKGS), storage_path=str(tmp_path / "s"),
                            retention_days=0.01))
    c = app.test_client()
    digest = c.get("/v2/hello/manifests/latest").headers["Docker-Content-Digest"]
    assert c.get(f"/v2/hello/manifests/{digest}").headers[front.EXPIRES] == "216"


def test_big_blobs_go_to_the_web_server_small_ones_are_sent_to_be_kept(tmp_path, monkeypatch):
    app = create_app(Config(pkgs_path=str(PKGS), storage_path=str(tmp_path / "s"),
                            blob_accel="/_registry_blobs/"))
    c = app.test_client()
    layers = sorted(c.get("/v2/hello/manifests/latest").get_json()["layers"],
                    key=lambda l: l["size"])
    small, big = layers[0], layers[-1]
    monkeypatch.setattr(front, "CACHED_BLOB_MAX", big["size"] - 1)
    sent = c.get(f"/v2/hello/blobs/{small['digest']}")
    assert len(sent.data) == small["size"] and "X-Accel-Redirect" not in sent.headers
    assert sent.headers[front.EXPIRES] == str(front.BLOB_SECONDS)
    redirected = c.get(f"/v2/hello/blobs/{big['digest']}")
    assert redirected.data == b"" and redirected.headers["X-Accel-Redirect"].endswith(big["digest"])
    assert front.EXPIRES not in redirected.headers


# --- credentials ----------------------------------------------------------

def test_without_authentication_the_answer_is_yes_and_kept(client):
    r = client.get(front.AUTH_PATH)
    assert r.status_code == 200 and r.data == b""
    assert r.headers[front.EXPIRES] == str(front.AUTH_SECONDS)


@pytest.fixture
def locked(tmp_path):
    path = tmp_path / "htpasswd"
    path.write_text(entry("alice", "wonderland"))
    return create_app(Config(pkgs_path=str(PKGS), storage_path=str(tmp_path / "s"),
                             htpasswd=str(path), tls_in_front=True,
                             user_header="X-Forwarded-User", user_header_peers="127.0.0.1"))


def test_good_credentials_are_a_kept_yes_anything_else_a_bare_no(locked):
    c = locked.test_client()
    yes = c.get(front.AUTH_PATH, headers=basic("alice", "wonderland"))
    assert yes.status_code == 200 and yes.headers[front.EXPIRES] == str(front.AUTH_SECONDS)
    for headers in ({}, basic("alice", "wrong"), basic("mallory", "x")):
        no = c.get(front.AUTH_PATH, headers=headers)
        assert no.status_code == 401 and no.data == b"" and front.EXPIRES not in no.headers


def test_the_check_counts_no_failures_the_request_itself_does(locked):
    c = locked.test_client()
    for _ in range(30):  # past the lockout, were they counted
        assert c.get(front.AUTH_PATH, headers=basic("alice", "wrong")).status_code == 401
    assert c.get("/v2/", headers=basic("alice", "wonderland")).status_code == 200
    for _ in range(10):
        assert c.get("/v2/", headers=basic("alice", "wrong")).status_code == 401
    assert c.get("/v2/", headers=basic("alice", "wrong")).status_code == 429


def test_a_user_named_by_the_proxy_is_a_yes_not_kept(locked):
    r = locked.test_client().get(front.AUTH_PATH, headers={"X-Forwarded-User": "carol"})
    assert r.status_code == 200 and front.EXPIRES not in r.headers
