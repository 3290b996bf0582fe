"""Operators' commands that build, through the Flask CLI."""
from builders.image.names import Image


def test_prebuild_builds_names_and_a_file_of_them(app, tmp_path):
    names = tmp_path / "popular.txt"
    names.write_text("# after the channel moved\nshell/hello\n\nhello  # again: once\n")
    result = app.test_cli_runner().invoke(args=["prebuild", "curl", "--file", str(names)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "curl:latest: built in" in result.output
    assert any(line.startswith("shell/hello:latest: built in") for line in lines)
    assert any(line.startswith("hello:latest: built in") for line in lines)
    # a pull now finds them made: no job is started
    images = app.extensions["images"]
    assert not hasattr(images.start(Image.from_name("curl"), "latest"), "wait")
    again = app.test_cli_runner().invoke(args=["prebuild", "curl"])
    assert again.exit_code == 0 and "curl:latest: already built" in again.output


def test_prebuild_says_what_failed_and_exits_1(app):
    result = app.test_cli_runner().invoke(args=["prebuild", "hello", "nosuchpkg", "broken"])
    assert result.exit_code == 1
    assert "hello:latest: built in" in result.output
    assert "nosuchpkg:latest: failed: package not found in the package source: nosuchpkg" \
        in result.output
    assert "broken:latest: failed: package broken failed to build" in result.output


def test_prebuild_refuses_what_is_no_image_name(app):
    result = app.test_cli_runner().invoke(args=["prebuild", "Not/Valid"])
    assert result.exit_code == 2 and "not an image name: Not/Valid" in result.output
    result = app.test_cli_runner().invoke(args=["prebuild"])
    assert result.exit_code == 2


def test_prebuild_makes_every_platform(tmp_path):
    from app import create_app
    from app.config import Config
    from builders.image.platforms import AMD64, ARM64
    from builders.image.records import IndexRecord
    from tests.conftest import PKGS
    app = create_app(Config(pkgs_path=str(PKGS), storage_path=str(tmp_path / "s"),
                            platforms=(AMD64, ARM64)))
    result = app.test_cli_runner().invoke(args=["prebuild", "curl", "no-arm"])
    assert result.exit_code == 1
    assert "curl:latest: built in" in result.output
    assert "no-arm:latest: failed: linux/arm64 (aarch64-linux): package no-arm failed" \
        in result.output
    index = app.extensions["images"].start(Image.from_name("curl"), "latest")
    assert isinstance(index, IndexRecord) and set(index.members) == {"linux/amd64", "linux/arm64"}


def test_sbom_backfills_images_built_before_sboms(tmp_path):
    import json
    import os
    from app import create_app
    from app.config import Config
    from storage import keys
    from tests.conftest import PKGS
    config = Config(pkgs_path=str(PKGS), storage_path=str(tmp_path / "s"))
    first = create_app(config)
    images = first.extensions["images"]
    record = images.image(Image.from_name("hello"), "latest")
    # as a record of the registry before SBOMs: no SBOM, no referrers
    store = first.extensions["storage"]
    old = json.loads(record.to_json())
    del old["sbom"], old["licenses"]
    store.put_bytes(keys.manifest(record.key), json.dumps(old).encode(), "application/json")
    for subject in record.sbom["referrers"]:
        os.remove(store._path(keys.referrers(subject)))

    app = create_app(config)  # another process, which reads the old record
    client = app.test_client()
    subject = client.get("/v2/hello/manifests/latest").headers["Docker-Content-Digest"]
    assert client.get(f"/v2/hello/referrers/{subject}").get_json()["manifests"] == []
    assert "built before the registry made SBOMs" in client.get("/builds/hello").get_data(
        as_text=True)
    result = app.test_cli_runner().invoke(args=["sbom", "hello", "git"])
    assert result.exit_code == 0, result.output
    assert "hello:latest (linux/amd64): made" in result.output
    assert "git:latest (linux/amd64): not built" in result.output
    listed = client.get(f"/v2/hello/referrers/{subject}").get_json()["manifests"]
    assert [m["digest"] for m in listed] == [record.sbom["referrers"][subject]["digest"]]
    # the image is served as it was
    assert client.get("/v2/hello/manifests/latest").headers["Docker-Content-Digest"] == subject
    again = app.test_cli_runner().invoke(args=["sbom", "hello"])
    assert "hello:latest (linux/amd64): has one" in again.output
