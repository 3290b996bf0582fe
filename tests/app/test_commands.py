"""Operators' commands through the Flask CLI."""
from builders.image import Image


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
    from builders.platforms import AMD64, ARM64
    from builders.records import IndexRecord
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
