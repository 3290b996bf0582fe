"""The pages people read, through the Flask client."""
import re

import pytest


@pytest.fixture
def built(client):
    for name in ("shell/git", "shell/htop", "broken", "hostile-log"):
        client.get(f"/v2/{name}/manifests/latest")
    return client


def test_landing_page(built):
    r = built.get("/", headers={"Host": "registry.example:5000"})
    page = r.get_data(as_text=True)
    assert r.status_code == 200 and r.content_type.startswith("text/html")
    assert "docker pull registry.example:5000/shell/git/htop" in page
    assert "bashInteractive" in page and "arm64" in page
    assert "the local package set at" in page
    assert "The tag latest is the folder as it is now;" in page
    assert "pulls those images again. Any other tag means latest." in page
    assert re.search(r'href="/builds/[^"]*git[^"]*:latest"', page)
    assert re.search(r"broken.*failed to build", page, re.S)


def test_hostile_host_header_never_reaches_the_page_as_markup(client):
    for headers in ({"Host": "<script>x</script>"},
                    {"X-Forwarded-Host": "<script>x</script>"}):
        r = client.get("/", headers=headers)
        assert r.status_code == 200
        assert "<script>x</script>" not in r.get_data(as_text=True)


def test_build_page_of_a_built_image_shows_layers_and_sharing(built):
    r = built.get("/builds/shell/htop:latest")
    page = r.get_data(as_text=True)
    assert r.status_code == 200
    assert 'id="status">built<' in page
    assert "closure" in page and 'id="layers"' in page
    # the shell's packages and busybox are in shell/git's image too
    assert page.count("with 1 other image") >= 5


def test_build_page_of_a_failure_has_the_log(built):
    page = built.get("/builds/broken:latest").get_data(as_text=True)
    assert 'id="status">failed<' in page
    assert "package broken failed to build" in page
    assert "fails to build on purpose" in page


def test_log_is_escaped(built):
    page = built.get("/builds/hostile-log:latest").get_data(as_text=True)
    assert "<script>document.title" not in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;document.title=&#34;pwned&#34;&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt; &amp; more" in page


def test_build_page_of_an_image_never_built(client):
    r = client.get("/builds/hello/git:v2")
    assert r.status_code == 404
    assert "not built yet" in r.get_data(as_text=True)
    assert client.get("/builds/Bad..Name:latest").status_code == 400


def test_registry_error_points_at_the_build_page(client):
    err = client.get("/v2/broken/manifests/latest").get_json()["errors"][0]
    assert err["detail"]["build_page"] == "http://localhost/builds/broken:latest"


def test_package_lookup(client):
    page = client.get("/packages?name=langpackages.foo").get_data(as_text=True)
    assert "langPackages.foo exists: lang-foo-1.0 (version 1.0)" in page
    page = client.get("/packages?name=gti").get_data(as_text=True)
    assert "No package gti" in page and 'href="/packages?name=git"' in page
    r = client.get("/packages?name=%3Cb%3E")
    assert r.status_code == 400 and "<b>" not in r.get_data(as_text=True)


def test_build_in_progress_shows_its_log(app, client, monkeypatch):
    images = app.extensions["images"]
    from builders.image.names import Image
    build = images.history.start(images.pinned(Image.from_name("hello")).label, "latest", "k")
    with open(build.log_path, "w") as f:
        f.write("building '/nix/store/abc-hello.drv'...\n")
    page = client.get("/builds/hello:latest").get_data(as_text=True)
    assert 'http-equiv="refresh"' in page and 'id="status">building<' in page
    assert "building &#39;/nix/store/abc-hello.drv&#39;..." in page


def test_pulls_work_when_the_history_cannot_open(tmp_path):
    import os
    from app import create_app
    from app.config import Config
    from tests.conftest import PKGS
    state = tmp_path / "state"
    os.makedirs(state / "history")
    (state / "history" / "builds.sqlite").write_bytes(b"not a database at all" * 100)
    app = create_app(Config(pkgs_path=str(PKGS), storage_path=str(tmp_path / "s"),
                            state_path=str(state)))
    c = app.test_client()
    assert c.get("/v2/hello/manifests/latest").status_code == 200
    assert c.get("/").status_code == 200
    assert c.get("/builds/hello:latest").status_code == 200


def test_build_page_shows_what_a_running_job_is_doing(tmp_path):
    from app import create_app
    from app.config import Config
    from builders.image.names import Image
    from tests.conftest import drowsy_set
    app = create_app(Config(pkgs_path=drowsy_set(tmp_path / "pkgs", 4),
                            storage_path=str(tmp_path / "s"), pull_wait=0.5))
    client = app.test_client()
    r = client.get("/v2/drowsy/manifests/latest")
    assert r.status_code == 429 and r.headers["Retry-After"] == "10"
    error = r.get_json()["errors"][0]
    assert error["message"].startswith("drowsy:latest is still building (")
    assert error["detail"]["build_page"] == "http://localhost/builds/drowsy:latest"
    page = client.get("/builds/drowsy:latest").get_data(as_text=True)
    assert 'id="status">building<' in page
    assert re.search(r'id="phase">(evaluating|realising|making layers|storing)<', page)
    metrics = client.get("/metrics").get_data(as_text=True)
    running = [float(v) for v in re.findall(r'^registry_build_jobs\{phase="[^"]+"\} (\S+)$',
                                            metrics, re.M)]
    assert sum(running) >= 1
    # the job goes on; a later pull gets the image
    app.extensions["images"].image(Image.from_name("drowsy"), "latest", wait=60)
    assert client.get("/v2/drowsy/manifests/latest").status_code == 200


def test_meta_packages_out_of_place_are_explained(client):
    r = client.get("/v2/hello/shell/manifests/latest")
    assert r.status_code == 404
    assert r.get_json()["errors"][0]["message"] == \
        "shell is a meta-package; put it first: shell/hello"
    page = client.get("/builds/hello/shell:latest")
    assert page.status_code == 400
    assert "put it first: shell/hello" in page.get_data(as_text=True)
    lookup = client.get("/packages?name=shell").get_data(as_text=True)
    assert "shell is a meta-package, not a package: put it first" in lookup


def test_an_index_in_progress_says_what_each_platform_does(tmp_path):
    from app import create_app
    from app.config import Config
    from builders.image.names import Image
    from builders.image.manifest import OCI_INDEX
    from builders.image.platforms import AMD64, ARM64
    from tests.conftest import drowsy_set
    app = create_app(Config(pkgs_path=drowsy_set(tmp_path / "pkgs", 4),
                            storage_path=str(tmp_path / "s"), pull_wait=0.5,
                            platforms=(AMD64, ARM64)))
    client = app.test_client()
    r = client.get("/v2/drowsy/manifests/latest", headers={"Accept": OCI_INDEX})
    assert r.status_code == 429
    message = r.get_json()["errors"][0]["message"]
    assert re.search(r"still building \(linux/amd64: [a-z ]+.*; linux/arm64: [a-z ]+", message)
    app.extensions["images"].image(Image.from_name("drowsy"), "latest", wait=120)
    page = client.get("/").get_data(as_text=True)
    assert "Every image is built for linux/amd64, linux/arm64" in page
    # each platform's build links to the name that shows it
    assert 'href="/builds/arm64/drowsy:latest"' in page and 'href="/builds/drowsy:latest"' in page
    arm = client.get("/builds/arm64/drowsy:latest").get_data(as_text=True)
    assert 'id="status">built<' in arm and "(arm64)" in arm


def test_the_build_page_lists_licences_and_links_the_sbom(client):
    assert client.get("/v2/git/hello/manifests/latest").status_code == 200
    page = client.get("/builds/git/hello:latest").get_data(as_text=True)
    assert "<td><code>git</code></td><td>GPL-2.0-only, LGPL-2.1-or-later</td>" in page
    assert "<td><code>hello</code></td><td>GPL-3.0-or-later</td>" in page
    assert 'href="/sbom/git/hello:latest"' in page
    assert re.search(r"curl -s 'http://localhost/v2/git/hello/referrers/sha256:[0-9a-f]{64}"
                     r"\?artifactType=application/vnd.cyclonedx%2Bjson'", page)
    sbom = client.get("/sbom/git/hello:latest")
    assert sbom.status_code == 200 and sbom.content_type == "application/vnd.cyclonedx+json"
    assert sbom.get_json()["metadata"]["component"]["name"] == "git/hello"
    assert client.get("/sbom/never/built:latest").status_code == 404


def pull_commands(page):
    return re.search(r'<pre id="pull">(.*?)</pre>', page, re.S).group(1)


def test_the_pull_commands_suit_how_the_page_was_reached(client):
    plain = client.get("/", headers={"Host": "registry.example:5000"}).get_data(as_text=True)
    assert "podman pull --tls-verify=false registry.example:5000/" in pull_commands(plain)
    assert "skopeo copy --src-tls-verify=false docker://registry.example:5000/" in \
        pull_commands(plain)
    assert '{"insecure-registries": ["registry.example:5000"]}' in plain
    # over HTTPS (gunicorn sets the scheme, from a trusted proxy's
    # X-Forwarded-Proto too: tests/e2e/test_api.py): plain commands
    https = client.get("/", headers={"Host": "registry.example"},
                       environ_overrides={"wsgi.url_scheme": "https"})
    page = https.get_data(as_text=True)
    assert "podman pull registry.example/" in pull_commands(page)
    assert "tls-verify" not in page and "insecure-registries" not in page


def test_examples_and_revision_come_from_the_package_set_served(tmp_path):
    from app import create_app
    from app.config import Config
    from builders.sources.folder import tree_hash
    from tests.conftest import PKGS, package_set
    page = create_app(Config(pkgs_path=str(PKGS), storage_path=str(tmp_path / "a"))
                      ).test_client().get("/").get_data(as_text=True)
    assert "docker pull localhost/shell/git/htop:latest" in pull_commands(page)
    assert "python3packages" not in page  # the test set has no python3Packages
    assert f"(contents {tree_hash(str(PKGS))[:12]})" in page
    assert "efc650e0f34d" not in page
    # a set without git and htop: the examples are packages it has
    other = package_set(tmp_path / "pkgs", [("    git = script", "    git2 = script"),
                                            ("    htop = script", "    htop2 = script")])
    page = create_app(Config(pkgs_path=other, storage_path=str(tmp_path / "b"))
                      ).test_client().get("/").get_data(as_text=True)
    assert "docker pull localhost/shell/curl/hello:latest" in pull_commands(page)
    assert "git" not in pull_commands(page) and "htop" not in page


def test_recent_builds_are_named_as_asked_and_typos_are_no_builds(client):
    for name in ("shell/hello", "hello/nosuch", "arm64", "broken"):
        client.get(f"/v2/{name}/manifests/latest")
    page = client.get("/").get_data(as_text=True)
    recent = page.split("<h2>Recent builds</h2>", 1)[1].split("<h2>Recent failures</h2>")[0]
    assert '<a href="/builds/shell/hello:latest">shell/hello</a>' in recent
    assert "bashinteractive" not in recent and "amd64:" not in recent
    assert "nosuch" not in page and "arm64" not in recent
    assert '<a href="/builds/broken:latest">broken</a>' in page.split("Recent failures")[1]


def test_a_build_page_shows_the_digest_and_how_to_pull_by_it(client):
    from builders.image.manifest import DOCKER_MANIFEST
    pulled = client.get("/v2/shell/hello/manifests/latest", headers={"Accept": DOCKER_MANIFEST})
    digest = pulled.headers["Docker-Content-Digest"]
    page = client.get("/builds/shell/hello:latest").get_data(as_text=True)
    assert f'<code id="digest">{digest}</code>' in page
    by_digest = re.search(r'<pre id="pull-by-digest">(.*?)</pre>', page, re.S).group(1)
    assert by_digest.splitlines() == [
        f"docker pull localhost/shell/hello@{digest}",
        f"podman pull --tls-verify=false localhost/shell/hello@{digest}",
        f"skopeo copy --src-tls-verify=false docker://localhost/shell/hello@{digest} "
        "oci:out:latest"]
    assert client.get(f"/v2/shell/hello/manifests/{digest}").data == pulled.data
