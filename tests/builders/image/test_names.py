import pytest

from builders.errors import InvalidImage
from builders.image import platforms
from builders.image.names import SHELL_PACKAGES, Image


def test_order_and_duplicates_do_not_matter():
    assert Image.from_name("git/htop") == Image.from_name("htop/git/git")
    assert Image.from_name("htop/git").packages == ("git", "htop")


def test_shell_adds_its_packages():
    image = Image.from_name("shell/git")
    assert set(image.packages) == {p.lower() for p in SHELL_PACKAGES} | {"git"}
    assert Image.from_name("shell/bashinteractive/git") == image
    # no platform of its own: the registry's platforms decide
    assert image.platform is None
    assert image.on(platforms.AMD64).system == "x86_64-linux"


def test_arm64_builds_for_aarch64():
    image = Image.from_name("arm64/shell/hello")
    assert (image.system, image.arch) == ("aarch64-linux", "arm64")
    assert image.platform == platforms.ARM64
    assert "hello" in image.packages and "bashinteractive" in image.packages
    assert Image.from_name("shell/arm64/hello").arch == "arm64"


def test_platforms_parse_in_order():
    assert platforms.parse("linux/arm64, linux/amd64") == (platforms.ARM64, platforms.AMD64)
    with pytest.raises(ValueError, match="unknown platform 'linux/s390x'.*linux/amd64, linux/arm64"):
        platforms.parse("linux/amd64,linux/s390x")
    with pytest.raises(ValueError, match="twice"):
        platforms.parse("linux/amd64,linux/amd64")
    assert platforms.ARM64.descriptor() == {"architecture": "arm64", "os": "linux", "variant": "v8"}


def test_dots_make_attribute_paths():
    assert Image.from_name("langpackages.foo/hello").attribute_paths == [["hello"], ["langpackages", "foo"]]


@pytest.mark.parametrize("name,message", [
    ("hello/shell", "shell is a meta-package; put it first: shell/hello"),
    ("shell/hello/arm64", "arm64 is a meta-package; put it first: shell/arm64/hello"),
    ("git/arm64/shell", "arm64, shell are meta-packages; put them first: arm64/shell/git"),
])
def test_a_meta_package_after_a_package_says_to_put_it_first(name, message):
    with pytest.raises(InvalidImage) as info:
        Image.from_name(name)
    assert info.value.message == message
