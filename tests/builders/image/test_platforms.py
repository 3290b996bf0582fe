"""Images for several platforms from one name: the index, its members,
platforms left out or failing (without failing the others), and layering
that stays sound."""
import json

import pytest

from builders.errors import BuildFailed, PlatformUnsupported
from builders.image.names import Image
from builders.digests import digest_of
from builders.image.manifest import (DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST,
                                     media_type_of)
from builders.image.platforms import AMD64, ARM64
from builders.image.records import ImageRecord, IndexRecord
from storage import keys
from tests.builders.test_service import service

BOTH = (AMD64, ARM64)


def entries(record, media_type=OCI_INDEX):
    return json.loads(record.manifest(media_type))["manifests"]


def layer_paths(svc, record: ImageRecord) -> list[list[str]]:
    """The store paths of each of the image's store path layers."""
    sources = [json.loads(svc.storage.read(keys.blob_source(layer["digest"])))
               for layer in record.layers]
    return [s["paths"] for s in sources if "paths" in s]


def config_of(svc, member: ImageRecord):
    return json.loads(svc.storage.read(keys.blob(member.config["digest"])))


def test_an_index_lists_each_platform_with_the_image_a_pinned_name_gets(tmp_path):
    svc = service(tmp_path, platforms=BOTH)
    index = svc.image(Image.from_name("shell/hello"), "latest")
    assert isinstance(index, IndexRecord)
    amd64 = svc.image(svc.pinned(Image.from_name("shell/hello")), "latest")
    arm64 = svc.image(Image.from_name("arm64/shell/hello"), "latest")
    assert isinstance(amd64, ImageRecord) and isinstance(arm64, ImageRecord)

    for index_type, member_type in ((OCI_INDEX, OCI_MANIFEST), (DOCKER_LIST, DOCKER_MANIFEST)):
        body = index.manifest(index_type)
        assert media_type_of(body) == index_type
        # pullable by digest, like every manifest
        assert svc.storage.read(keys.blob(digest_of(body))) == body
        listed = entries(index, index_type)
        assert [e["platform"] for e in listed] == [
            {"architecture": "amd64", "os": "linux"},
            {"architecture": "arm64", "os": "linux", "variant": "v8"}]
        for entry, member in zip(listed, (amd64, arm64)):
            assert entry["mediaType"] == member_type
            assert entry["digest"] == digest_of(member.manifest(member_type))
            assert entry["size"] == len(member.manifest(member_type))

    assert (config_of(svc, amd64)["architecture"], config_of(svc, arm64)["architecture"]) == (
        "amd64", "arm64")
    assert config_of(svc, arm64)["variant"] == "v8" and "variant" not in config_of(svc, amd64)
    # built for its own system: other store paths (busybox, imported from the
    # host, is the one path both share)
    arm_paths = {p for layer in layer_paths(svc, arm64) for p in layer}
    amd_paths = {p for layer in layer_paths(svc, amd64) for p in layer}
    assert arm64.system == "aarch64-linux" and arm_paths != amd_paths
    assert {p.split("-", 1)[1] for p in arm_paths} == {p.split("-", 1)[1] for p in amd_paths}
    assert index.members == {"linux/amd64": amd64.key, "linux/arm64": arm64.key}


def test_the_index_is_kept_and_served_again_without_nix(tmp_path):
    first = service(tmp_path, platforms=BOTH)
    index = first.image(Image.from_name("hello"), "latest")
    again = service(tmp_path, platforms=BOTH)
    assert again.image(Image.from_name("hello"), "latest").manifests == index.manifests
    assert again.builder.nix.runs == 0
    # the platforms' order is the index's: another order is another index
    swapped = service(tmp_path, platforms=(ARM64, AMD64)).image(Image.from_name("hello"), "latest")
    assert [e["platform"]["architecture"] for e in entries(swapped)] == ["arm64", "amd64"]


def test_a_platform_its_packages_are_not_available_on_is_left_out(tmp_path):
    svc = service(tmp_path, platforms=BOTH)
    index = svc.image(Image.from_name("amd64-only"), "latest")
    assert [e["platform"]["architecture"] for e in entries(index)] == ["amd64"]
    assert "linux/arm64" in index.left_out
    with pytest.raises(PlatformUnsupported) as e:
        svc.image(Image.from_name("arm64/amd64-only"), "latest")
    assert e.value.message == ("amd64-only is not available on linux/arm64 (aarch64-linux): "
                               "it is built for x86_64-linux")


def test_packages_available_on_no_platform_fail(tmp_path):
    svc = service(tmp_path, platforms=(ARM64,))
    with pytest.raises(PlatformUnsupported, match="not available on linux/arm64"):
        svc.image(Image.from_name("amd64-only"), "latest")


def test_a_platform_that_fails_to_build_leaves_the_others_pulling(tmp_path):
    svc = service(tmp_path, platforms=BOTH)
    index = svc.image(Image.from_name("no-arm"), "latest")
    assert isinstance(index, IndexRecord)
    assert [e["platform"]["architecture"] for e in entries(index)] == ["amd64"]
    assert index.failed["linux/arm64"].startswith(
        "linux/arm64 (aarch64-linux): package no-arm failed to build")
    # served, not kept: once arm64 builds, its pulls list it
    assert svc.storage.read(keys.manifest(index.key)) is None
    # a pull pinned to the platform says why, with the log
    with pytest.raises(BuildFailed) as e:
        svc.image(Image.from_name("arm64/no-arm"), "latest")
    assert e.value.message.startswith("package no-arm failed to build")
    assert "does not build on aarch64-linux" in e.value.log_tail
    # the platform that built is served alone to a client that takes no index
    assert isinstance(svc.image(svc.pinned(Image.from_name("no-arm")), "latest"), ImageRecord)


def test_an_index_fails_only_when_no_platform_builds(tmp_path):
    svc = service(tmp_path, platforms=BOTH)
    with pytest.raises(BuildFailed) as e:
        svc.image(Image.from_name("broken"), "latest")
    assert e.value.message.startswith("linux/amd64 (x86_64-linux): package broken failed to "
                                      "build")


def test_popularity_is_counted_per_platform(tmp_path):
    """One image for two platforms counts once on each: counted together,
    its every path would need "two images" and be popular at once."""
    svc = service(tmp_path, platforms=BOTH)
    svc.image(Image.from_name("git"), "latest")
    pop = svc.builder.popularity
    assert pop.derived("x86_64-linux")["libshared-1.0"] == 1
    assert pop.derived("aarch64-linux")["libshared-1.0"] == 1
    # a second image needing libshared makes it popular, on each platform
    # alike, however the platforms' builds interleaved
    htop = svc.image(Image.from_name("htop"), "latest")
    amd64, arm64 = (svc.image(svc.pinned(Image.from_name("htop")).on(p), "latest") for p in BOTH)
    assert htop.members == {"linux/amd64": amd64.key, "linux/arm64": arm64.key}
    shapes = [[[p.split("-", 1)[1] for p in layer] for layer in layer_paths(svc, r)]
              for r in (amd64, arm64)]
    assert shapes[0] == shapes[1]
    assert ["libshared-1.0"] in shapes[0]


def test_one_platform_serves_plain_images(tmp_path):
    svc = service(tmp_path)
    assert isinstance(svc.image(Image.from_name("hello"), "latest"), ImageRecord)
