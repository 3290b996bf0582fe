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
