"""Routes through the Flask client: grammar, negotiation, errors."""
import pytest

from app.errors import RegistryError
from app.registry import negotiate
from builders.manifest import DOCKER_MANIFEST, OCI_MANIFEST


@pytest.mark.parametrize("headers,expected", [
    ([], DOCKER_MANIFEST),
    (["*/*"], DOCKER_MANIFEST),
    ([OCI_MANIFEST, DOCKER_MANIFEST], OCI_MANIFEST),
    ([f"{DOCKER_MANIFEST}, {OCI_MANIFEST}"], DOCKER_MANIFEST),
    ([f"{DOCKER_MANIFEST}; q=0.2, {OCI_MANIFEST}; q=0.9"], OCI_MANIFEST),
    ([f"{OCI_MANIFEST};q=0"], DOCKER_MANIFEST),
    (["application/vnd.docker.distribution.manifest.v1+prettyjws"], DOCKER_MANIFEST),
])
def test_negotiate(headers, expected):
    assert negotiate(headers) == expected


def test_unexpected_exceptions_never_show_a_trace(app, client, monkeypatch):
    def boom(*a, **kw):
        raise RuntimeError("secret internals at /srv/x.py line 3")
    monkeypatch.setattr(app.extensions["images"], "image", boom)
    r = client.get("/v2/hello/manifests/latest")
    assert r.status_code == 500
    assert r.content_type == "application/json"
    body = r.get_data(as_text=True)
    assert "secret internals" not in body and "Traceback" not in body
    assert r.get_json()["errors"][0]["code"] == "UNKNOWN"


def test_storage_failure_is_503(app, client, monkeypatch):
    from storage.errors import StorageUnavailable

    def down(*a, **kw):
        raise StorageUnavailable("disk on fire")
    monkeypatch.setattr(app.extensions["storage"], "open", down)
    r = client.get("/v2/hello/blobs/sha256:" + "0" * 64)
    assert r.status_code == 503
    assert r.get_json()["errors"][0]["code"] == "STORAGE_UNAVAILABLE"
    assert "storage" in r.get_json()["errors"][0]["message"]


@pytest.mark.parametrize("path,status,code", [
    ("/v2/_catalog", 404, "NAME_UNKNOWN"),
    ("/v2/hello/tags/list", 404, "NAME_UNKNOWN"),
    ("/nothing-here", 404, "NAME_UNKNOWN"),
    ("/v2/a//b/manifests/latest", 400, "NAME_INVALID"),
    ("/v2/%2e%2e/manifests/latest", 400, "NAME_INVALID"),
    ("/v2/h%C3%A9llo/manifests/latest", 400, "NAME_INVALID"),
    ("/v2/hello/manifests/la%0atest", 400, "TAG_INVALID"),
])
def test_odd_paths_get_registry_errors(client, path, status, code):
    r = client.get(path)
    assert r.status_code == status
    assert r.get_json()["errors"][0]["code"] == code


def test_unknown_method_is_unsupported(client):
    r = client.open("/v2/hello/manifests/latest", method="BREW")
    assert r.status_code == 405
    assert r.get_json()["errors"][0]["code"] == "UNSUPPORTED"


def test_error_rendering():
    class Teapot(RegistryError):
        code, status = "TEAPOT", 418
    resp = Teapot("short and stout", {"spout": 1}, headers={"Retry-After": "5"}).response()
    assert resp.status_code == 418 and resp.headers["Retry-After"] == "5"
    assert resp.get_json() == {"errors": [{"code": "TEAPOT", "message": "short and stout",
                                           "detail": {"spout": 1}}]}


def test_landing_page_uses_the_request_host(client):
    r = client.get("/", headers={"Host": "registry.example"})
    assert r.status_code == 200
    assert "docker pull registry.example/shell/git/htop" in r.get_data(as_text=True)
