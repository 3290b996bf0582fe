"""The /v2 endpoints through the app's test client: grammar, negotiation, errors."""
import dataclasses
import hashlib
import json
import logging
import os

import pytest

from app import create_app, front, logs
from storage import keys

from app.errors import RegistryError
from builders.image.manifest import DOCKER_MANIFEST, OCI_MANIFEST


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
    ("/v2/hello/tags/list/more", 404, "NAME_UNKNOWN"),
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
    status, headers, body = Teapot("short and stout", {"spout": 1},
                                   headers={"Retry-After": "5"}).render()
    headers = dict(headers)
    assert status == 418 and headers["Retry-After"] == "5"
    assert headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) == len(body)
    assert json.loads(body) == {"errors": [{"code": "TEAPOT", "message": "short and stout",
                                            "detail": {"spout": 1}}]}


def test_landing_page_uses_the_request_host(client):
    r = client.get("/", headers={"Host": "registry.example"})
    assert r.status_code == 200
    assert "docker pull registry.example/shell/git/htop" in r.get_data(as_text=True)


# -- blobs and manifests, each answered once, by one handler ----------------

@pytest.fixture
def blob(storage):
    data = os.urandom(300_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    storage.put_bytes(keys.blob(digest), data)
    return digest, data


@pytest.fixture
def looks(storage, monkeypatch):
    return record_looks(storage, monkeypatch)


def record_looks(storage, monkeypatch) -> list[tuple[str, str]]:
    """What storage is asked of objects from now on: (open or size, key) in
    order (a size that has to open the file shows both)."""
    calls = []
    for name in ("open", "size"):
        real = getattr(storage, name)

        def counted(key, _real=real, _name=name):
            calls.append((_name, key))
            return _real(key)
        monkeypatch.setattr(storage, name, counted)
    return calls


class Lines(logging.Handler):
    """Log records as the registry's handler sees them, request id included."""

    def __init__(self):
        super().__init__()
        self.addFilter(logs.RequestIdFilter())
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def lines():
    handler = Lines()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler.records
    root.removeHandler(handler)


def test_a_whole_blob_and_its_head(client, blob, looks):
    digest, data = blob
    r = client.get(f"/v2/shell/hello/blobs/{digest}", headers={"X-Request-ID": "blob-1"})
    assert r.status_code == 200 and r.data == data
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Content-Length"] == str(len(data))
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert r.headers["X-Request-ID"] == "blob-1"
    head = client.head(f"/v2/shell/hello/blobs/{digest}")
    assert head.status_code == 200 and head.data == b""
    assert comparable(head) == comparable(r)
    # the HEAD checks the blob without reading it: its size, from the
    # check the GET made
    assert looks == [("open", keys.blob(digest)), ("size", keys.blob(digest))]


def comparable(r):
    return sorted((k, v) for k, v in r.headers.items() if k not in ("X-Request-ID", "Date"))


def test_behind_a_web_server_a_blob_is_checked_and_its_file_named(config, monkeypatch):
    """With NIXERY_BLOB_ACCEL the answer to a GET of a blob too big for
    nginx to keep is the file's name for the web server in front
    (deploy/nginx.conf); the blob is checked as before, by its size once
    its digest was checked, and a corrupt one is not named."""
    monkeypatch.setattr(front, "CACHED_BLOB_MAX", 100_000)
    app = create_app(dataclasses.replace(config, blob_accel="/_blobs/"))
    storage = app.extensions["storage"]
    data = os.urandom(300_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    storage.put_bytes(keys.blob(digest), data)
    client = app.test_client()
    asked = record_looks(storage, monkeypatch)
    url = f"/v2/hello/blobs/{digest}"
    for _ in range(2):
        r = client.get(url)
        assert r.status_code == 200 and r.data == b""
        assert r.headers["X-Accel-Redirect"] == f"/_blobs/{keys.blob(digest)}"
        assert r.headers["Content-Length"] == "0"
        assert r.headers["Docker-Content-Digest"] == digest
    head = client.head(url)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(data))
    assert "X-Accel-Redirect" not in head.headers
    # read once, to check it; then a stat a request
    assert asked == [("size", keys.blob(digest)), ("open", keys.blob(digest)),
                     ("size", keys.blob(digest)), ("size", keys.blob(digest))]
    with open(os.path.join(storage.root, keys.blob(digest)), "r+b") as f:
        f.truncate(1000)
    r = client.get(url)
    assert r.status_code == 404 and "X-Accel-Redirect" not in r.headers
    error = r.get_json()["errors"][0]
    assert error["code"] == "BLOB_UNKNOWN" and "corrupt" in error["message"]


def test_ranges_and_conditions_on_blobs(client, blob):
    digest, data = blob
    url = f"/v2/hello/blobs/{digest}"
    part = client.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.data == data[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    # a range under an If-Range for other content is the whole blob
    whole = client.get(url, headers={"Range": "bytes=10-19", "If-Range": '"other"'})
    assert whole.status_code == 200 and whole.data == data
    same = client.get(url, headers={"Range": "bytes=10-19", "If-Range": f'"{digest}"'})
    assert same.status_code == 206
    outside = client.get(url, headers={"Range": f"bytes={len(data) + 5}-"})
    assert outside.status_code == 416
    assert outside.headers["Content-Range"] == f"bytes */{len(data)}"
    assert outside.get_json()["errors"][0]["code"] == "RANGE_INVALID"
    cached = client.get(url, headers={"If-None-Match": f'"{digest}"'})
    assert cached.status_code == 304 and cached.data == b""
    assert cached.headers["ETag"] == f'"{digest}"'
    other = client.get(url, headers={"If-None-Match": '"other"'})
    assert other.status_code == 200 and other.data == data


def test_a_corrupt_blob_is_looked_at_once_and_never_served(client, blob, storage, looks):
    digest, _ = blob
    with open(os.path.join(storage.root, keys.blob(digest)), "r+b") as f:
        f.write(b"\0" * 16)
    r = client.get(f"/v2/hello/blobs/{digest}")
    assert r.status_code == 404
    error = r.get_json()["errors"][0]
    assert error["code"] == "BLOB_UNKNOWN" and "corrupt" in error["message"]
    assert [k for _, k in looks if k.startswith("layers/")] == [keys.blob(digest)]


def test_a_storage_outage_is_answered_once_under_one_request_id(app, client, lines,
                                                                 monkeypatch):
    from storage.errors import StorageUnavailable
    calls = []

    def down(key):
        calls.append(key)
        logging.getLogger("storage.test").warning("cannot reach the disk")
        raise StorageUnavailable("disk on fire")
    monkeypatch.setattr(app.extensions["storage"], "open", down)
    r = client.get("/v2/hello/blobs/sha256:" + "1" * 64, headers={"X-Request-ID": "outage-1"})
    assert r.status_code == 503
    assert len(calls) == 1
    ids = {rec.request_id for rec in lines if rec.name.startswith(("storage", "app"))}
    assert ids == {"outage-1"}


def test_a_built_image_is_served_alike_from_memory(app, client, storage, monkeypatch):
    url = "/v2/shell/hello/manifests/latest"
    first = {accept: client.get(url, headers={"Accept": accept})
             for accept in (OCI_MANIFEST, DOCKER_MANIFEST)}
    calls = []
    for name in ("read", "open", "exists", "put"):
        real = getattr(storage, name)
        monkeypatch.setattr(storage, name, lambda *a, _r=real, _n=name, **kw: (
            calls.append(_n), _r(*a, **kw))[1])
    for accept, r in first.items():
        assert r.status_code == 200 and r.content_type == accept
        again = client.get(url, headers={"Accept": accept})
        head = client.head(url, headers={"Accept": accept})
        assert again.data == r.data and head.data == b""
        assert comparable(again) == comparable(r) == comparable(head)
    assert calls == []  # no storage call, no build: the record is in memory
    # by digest: the stored bytes, as built
    digest = first[OCI_MANIFEST].headers["Docker-Content-Digest"]
    by_digest = client.get(f"/v2/shell/hello/manifests/{digest}")
    assert by_digest.data == first[OCI_MANIFEST].data
    assert by_digest.content_type == OCI_MANIFEST
    assert client.get(url, headers={"Accept": OCI_MANIFEST,
                                    "If-None-Match": f'"{digest}"'}).status_code == 304


def test_a_tag_due_for_a_new_look_at_the_source_is_resolved_again(app, client):
    url = "/v2/hello/manifests/latest"
    first = client.get(url)
    assert first.status_code == 200
    app.extensions["images"].revisions.refresh = 0  # every revision is stale now
    again = client.get(url)
    assert again.status_code == 200 and again.data == first.data


def test_layer_threads_log_under_the_request_id(client, lines):
    r = client.get("/v2/shell/hello/manifests/latest", headers={"X-Request-ID": "build-1"})
    assert r.status_code == 200
    made = [rec for rec in lines if rec.name == "builders.layers.layerstore"]
    assert made and all(rec.threadName.startswith("layer") for rec in made)
    assert {rec.request_id for rec in made} == {"build-1"}


def test_an_error_says_why_in_its_status_line_too(client):
    """For clients that show only the status line (containerd's HEAD)."""
    r = client.head("/v2/h%C3%A9llo/manifests/latest")
    assert r.status_code == 400 and r.data == b""
    assert r.status.startswith("400 invalid repository name 'h?llo': use lower-case")
    assert client.get("/v2/").status == "200 OK"


# -- tags ----------------------------------------------------------------------

def test_every_valid_name_has_its_tags_listed(client):
    r = client.get("/v2/shell/hello/tags/list")
    assert r.status_code == 200 and r.content_type == "application/json"
    assert r.get_json() == {"name": "shell/hello", "tags": ["latest"]}
    assert "Link" not in r.headers
    assert client.get("/v2/never/built/yet/tags/list").get_json()["tags"] == ["latest"]
    assert client.get("/v2/hello/tags/list?n=0").get_json()["tags"] == []
    assert client.get("/v2/hello/tags/list?last=latest").get_json()["tags"] == []
    bad = client.get("/v2/hello/tags/list?n=-1")
    assert bad.status_code == 400
    assert bad.get_json()["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"
    assert client.get("/v2/Hello/tags/list").status_code == 400


def test_tags_listed_are_tags_that_pull(tmp_path):
    from app import create_app
    from app.config import Config
    from builders.sources.folder import tree_hash
    from tests.conftest import package_set
    pkgs = package_set(tmp_path / "pkgs")
    client = create_app(Config(pkgs_path=pkgs, storage_path=str(tmp_path / "s"),
                               source_refresh=0)).test_client()
    assert client.get("/v2/hello/manifests/latest").status_code == 200
    earlier = tree_hash(pkgs)[:12]
    with open(f"{pkgs}/default.nix", "a") as f:
        f.write("# the folder changed\n")
    assert client.get("/v2/hello/tags/list").get_json()["tags"] == [earlier, "latest"]
    # curl was never built at the earlier revision: that tag would not pull it
    assert client.get("/v2/curl/tags/list").get_json()["tags"] == ["latest"]
    assert client.get(f"/v2/curl/manifests/{earlier}").status_code == 404
    r = client.get("/v2/hello/shell/tags/list")
    assert r.status_code == 404 and r.get_json()["errors"][0]["code"] == "NAME_UNKNOWN"


def test_tags_are_paged_with_a_link_to_the_next_page(app, client, monkeypatch):
    tags = ["latest", "nixos-24.05", "nixos-unstable", "release-1", "v1", "has/slash"]
    monkeypatch.setattr(app.extensions["images"].revisions.source, "tags", lambda: sorted(tags))
    pages, url = [], "/v2/hello/tags/list?n=2"
    while url:
        r = client.get(url)
        pages.append(r.get_json()["tags"])
        link = r.headers.get("Link")
        url = link[1:link.index(">")] if link else None
        if link:
            assert link.endswith('>; rel="next"')
    # lexical order; a name no tag can be (with '/') is left out
    assert pages == [["latest", "nixos-24.05"], ["nixos-unstable", "release-1"], ["v1"]]


def test_strict_tags_answer_404_for_a_tag_that_names_nothing(tmp_path):
    from app import create_app
    from app.config import Config
    from tests.conftest import PKGS
    strict = create_app(Config(pkgs_path=str(PKGS), storage_path=str(tmp_path / "s"),
                               strict_tags=True)).test_client()
    r = strict.get("/v2/hello/manifests/missing-knenl3nxdfknifsem6dj")
    assert r.status_code == 404
    error = r.get_json()["errors"][0]
    assert error["code"] == "MANIFEST_UNKNOWN"
    assert "whose tags are latest" in error["message"] and "NIXERY_STRICT_TAGS" in error["message"]
    assert strict.get("/v2/hello/manifests/latest").status_code == 200
    assert "pulls those images again. Other tags are refused." in \
        strict.get("/").get_data(as_text=True)


def test_lenient_tags_mean_latest_as_in_nixery(client):
    assert client.get("/v2/hello/manifests/anything").data == \
        client.get("/v2/hello/manifests/latest").data


def test_several_platforms_give_an_index_to_clients_that_take_one(tmp_path):
    from app import create_app
    from app.config import Config
    from builders.image.manifest import DOCKER_LIST, OCI_INDEX
    from builders.image.platforms import AMD64, ARM64
    from tests.conftest import PKGS
    client = create_app(Config(pkgs_path=str(PKGS), storage_path=str(tmp_path / "s"),
                               platforms=(AMD64, ARM64))).test_client()
    r = client.get("/v2/hello/manifests/latest",
                   headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}"})
    assert r.status_code == 200 and r.content_type == OCI_INDEX
    index = r.get_json()
    assert r.headers["Docker-Content-Digest"] == "sha256:" + hashlib.sha256(r.data).hexdigest()
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    # the index and each manifest it lists, by digest, GET and HEAD alike
    by_digest = client.get(f"/v2/hello/manifests/{r.headers['Docker-Content-Digest']}")
    assert by_digest.data == r.data and by_digest.content_type == OCI_INDEX
    for m in index["manifests"]:
        member = client.get(f"/v2/hello/manifests/{m['digest']}")
        assert member.content_type == OCI_MANIFEST and len(member.data) == m["size"]
        # each platform's manifest has its own SBOM among its referrers
        [sbom] = client.get(f"/v2/hello/referrers/{m['digest']}").get_json()["manifests"]
        assert sbom["artifactType"] == "application/vnd.cyclonedx+json"
        head = client.head(f"/v2/hello/manifests/{m['digest']}")
        assert head.status_code == 200 and head.headers["Content-Length"] == str(m["size"])
    arm64 = client.get(f"/v2/hello/manifests/{index['manifests'][1]['digest']}").get_json()
    config = json.loads(client.get(f"/v2/hello/blobs/{arm64['config']['digest']}").data)
    assert (config["architecture"], config["variant"]) == ("arm64", "v8")

    # Docker's Accept gets the manifest list; a client that takes no index,
    # the first platform's manifest, which is the index's first entry
    docker = client.head("/v2/hello/manifests/latest", headers={
        "Accept": f"{DOCKER_MANIFEST}, {DOCKER_LIST}, {OCI_MANIFEST}, {OCI_INDEX}"})
    assert docker.content_type == DOCKER_LIST
    plain = client.get("/v2/hello/manifests/latest", headers={"Accept": OCI_MANIFEST})
    assert plain.content_type == OCI_MANIFEST
    assert plain.headers["Docker-Content-Digest"] == index["manifests"][0]["digest"]
    # the arm64/ prefix still pins one platform, index or not
    pinned = client.get("/v2/arm64/hello/manifests/latest",
                        headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"})
    assert pinned.content_type == OCI_MANIFEST
    assert pinned.headers["Docker-Content-Digest"] == index["manifests"][1]["digest"]


def test_a_platform_that_fails_fails_no_other_platforms_pull(tmp_path):
    from app import create_app
    from app.config import Config
    from builders.image.manifest import OCI_INDEX
    from builders.image.platforms import AMD64, ARM64
    from tests.conftest import PKGS
    client = create_app(Config(pkgs_path=str(PKGS), storage_path=str(tmp_path / "s"),
                               platforms=(AMD64, ARM64))).test_client()
    r = client.get("/v2/no-arm/manifests/latest", headers={"Accept": OCI_INDEX})
    assert r.status_code == 200
    assert [m["platform"]["architecture"] for m in r.get_json()["manifests"]] == ["amd64"]
    # the platform that failed says why when it is pulled
    r = client.get("/v2/arm64/no-arm/manifests/latest")
    assert r.status_code == 422
    assert r.get_json()["errors"][0]["message"].startswith("package no-arm failed to build")
    # a client that takes no index gets the platform that built
    assert client.get("/v2/no-arm/manifests/latest").status_code == 200


def test_a_platform_with_no_builder_is_a_retryable_503_and_the_others_pull(
        tmp_path, monkeypatch):
    import uuid
    from app import create_app
    from app.config import Config
    from builders.image.manifest import OCI_INDEX
    from builders.image.platforms import AMD64, ARM64
    from tests.conftest import package_set
    monkeypatch.setenv("NIX_CONFIG", "substituters =")  # this Nix cannot build aarch64-linux
    pkgs = package_set(tmp_path / "pkgs", [("Hello, world!", f"Hello, {uuid.uuid4().hex}!")])
    client = create_app(Config(pkgs_path=pkgs, storage_path=str(tmp_path / "s"),
                               platforms=(AMD64, ARM64))).test_client()
    r = client.get("/v2/hello/manifests/latest", headers={"Accept": OCI_INDEX})
    assert r.status_code == 200
    assert [m["platform"]["architecture"] for m in r.get_json()["manifests"]] == ["amd64"]
    r = client.get("/v2/arm64/hello/manifests/latest")
    assert r.status_code == 503 and r.headers["Retry-After"] == "10"
    error = r.get_json()["errors"][0]
    assert error["code"] == "BUILD_INTERRUPTED" and error["detail"]["cause"] == "no-builder"
    assert error["message"].startswith("this registry's Nix cannot build for aarch64-linux")
    # containerd shows only the status line of a HEAD: it says why too
    assert "cannot build for aarch64-linux" in client.head(
        "/v2/arm64/hello/manifests/latest").status


def created_of(client, name, tag="latest"):
    """An image's config `created`, and its SBOM's timestamp."""
    import json as json_
    from builders.image.manifest import OCI_MANIFEST
    manifest = client.get(f"/v2/{name}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    assert manifest.status_code == 200, manifest.get_data(as_text=True)
    config = client.get(f"/v2/{name}/blobs/{manifest.get_json()['config']['digest']}")
    sbom = client.get(f"/sbom/{name}:{tag}").get_json()
    return json_.loads(config.data)["created"], sbom["metadata"]["timestamp"]


def test_an_image_is_created_when_its_source_revision_was(tmp_path):
    import os
    import subprocess
    from app import create_app
    from app.config import Config
    from tests.conftest import PKGS, package_set
    # a folder has no date: the fixed time of the store's files
    folder = create_app(Config(pkgs_path=str(PKGS), storage_path=str(tmp_path / "a")))
    assert created_of(folder.test_client(), "hello") == ("1970-01-01T00:00:01Z",
                                                         "1970-01-01T00:00:01+00:00")
    # a git commit's time (the committer's: when it entered the history)
    repo = tmp_path / "repo"
    package_set(repo)
    env = dict(os.environ, GIT_AUTHOR_DATE="2020-01-01T00:00:00Z",
               GIT_COMMITTER_DATE="2024-05-06T07:08:09Z")
    for args in (["init", "-q", "-b", "main"], ["add", "default.nix"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=env)
    git = create_app(Config(pkgs_repo=f"file://{repo}", storage_path=str(tmp_path / "b")))
    assert created_of(git.test_client(), "hello") == ("2024-05-06T07:08:09Z",
                                                      "2024-05-06T07:08:09+00:00")


CYCLONEDX = "application/vnd.cyclonedx+json"


def test_an_images_sbom_is_found_through_the_referrers_api(client):
    from builders.image.manifest import OCI_INDEX
    sboms = set()
    for media_type in (DOCKER_MANIFEST, OCI_MANIFEST):
        image = client.get("/v2/shell/hello/manifests/latest", headers={"Accept": media_type})
        subject = image.headers["Docker-Content-Digest"]
        r = client.get(f"/v2/shell/hello/referrers/{subject}")
        assert r.status_code == 200 and r.content_type == OCI_INDEX
        assert "OCI-Filters-Applied" not in r.headers
        index = r.get_json()
        assert (index["schemaVersion"], index["mediaType"]) == (2, OCI_INDEX)
        [entry] = index["manifests"]
        assert (entry["mediaType"], entry["artifactType"]) == (OCI_MANIFEST, CYCLONEDX)
        artifact = client.get(f"/v2/shell/hello/manifests/{entry['digest']}")
        assert artifact.content_type == OCI_MANIFEST and len(artifact.data) == entry["size"]
        doc = json.loads(artifact.data)
        assert doc["subject"] == {"mediaType": media_type, "digest": subject,
                                  "size": len(image.data)}
        assert client.get(f"/v2/shell/hello/blobs/{doc['config']['digest']}").data == b"{}"
        bom = client.get(f"/v2/shell/hello/blobs/{doc['layers'][0]['digest']}")
        assert json.loads(bom.data)["bomFormat"] == "CycloneDX"
        sboms.add(doc["layers"][0]["digest"])

        # the filter, and the header that says it was applied
        kept = client.get(f"/v2/shell/hello/referrers/{subject}?artifactType={CYCLONEDX}")
        assert kept.headers["OCI-Filters-Applied"] == "artifactType"
        assert kept.get_json()["manifests"] == [entry]
        other = client.get(f"/v2/shell/hello/referrers/{subject}"
                           "?artifactType=application/vnd.example.signature")
        assert other.headers["OCI-Filters-Applied"] == "artifactType"
        assert other.get_json()["manifests"] == []

        # the referrers tag schema answers the same index
        tag = client.get(f"/v2/shell/hello/manifests/sha256-{subject[7:]}")
        assert tag.status_code == 200 and tag.content_type == OCI_INDEX
        assert tag.data == r.data
    assert len(sboms) == 1  # one SBOM, about both formats of one image


@pytest.mark.parametrize("digest", ["sha256:" + "0" * 64])
def test_a_digest_without_referrers_has_an_empty_index(client, digest):
    r = client.get(f"/v2/hello/referrers/{digest}")
    assert r.status_code == 200
    assert r.get_json() == {"manifests": [], "mediaType": "application/vnd.oci.image.index.v1+json",
                            "schemaVersion": 2}
    # and the config of an image, a blob that is no manifest, has none either
    config = json.loads(client.get("/v2/hello/manifests/latest").data)["config"]["digest"]
    assert client.get(f"/v2/hello/referrers/{config}").get_json()["manifests"] == []
    bad = client.get("/v2/hello/referrers/sha256:nothex")
    assert bad.status_code == 400 and bad.get_json()["errors"][0]["code"] == "DIGEST_INVALID"


def test_the_referrers_tag_never_asks_the_package_source(app, client, monkeypatch):
    image = client.get("/v2/hello/manifests/latest", headers={"Accept": OCI_MANIFEST})
    subject = image.headers["Docker-Content-Digest"]

    def unreachable(tag):
        raise AssertionError("the package source was asked")
    monkeypatch.setattr(app.extensions["images"].revisions, "resolve", unreachable)
    r = client.get(f"/v2/hello/manifests/sha256-{subject[7:]}")
    assert r.status_code == 200 and len(r.get_json()["manifests"]) == 1
