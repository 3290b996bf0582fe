"""The SBOM of an image: its Nix closure in CycloneDX, checked against
what Nix itself says of the store paths."""
import json
import subprocess

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from builders.image import sbom
from builders.image.names import Image
from builders.digests import digest_of
from builders.image.manifest import DOCKER_MANIFEST, OCI_MANIFEST
from builders.nixbuild.closure import sha256_hex
from storage import keys
from tests.builders.test_service import built_path, service


def nix_store(*args):
    return subprocess.run(["nix-store", *args], capture_output=True, text=True,
                          check=True).stdout.split()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    svc = service(tmp_path_factory.mktemp("sbom"))
    record = svc.image(svc.pinned(Image.from_name("git/hello/htop")), "latest")
    body = svc.storage.read(keys.blob(record.sbom["digest"]))
    return svc, record, body


def by_name(doc):
    return {c["name"]: c for c in doc["components"]}


def props(component):
    return {p["name"]: p["value"] for p in component.get("properties", ())}


def test_it_is_valid_cyclonedx(built):
    _, _, body = built
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(body.decode()) is None
    doc = json.loads(body)
    assert (doc["bomFormat"], doc["specVersion"]) == ("CycloneDX", "1.6")


def test_one_component_per_store_path_with_what_nix_says_of_it(built):
    _, _, body = built
    doc = json.loads(body)
    outs = [built_path(a) for a in ("git", "hello", "htop")]
    closure = set(nix_store("-qR", *outs))
    assert {props(c)["nix:store_path"] for c in doc["components"]} == closure
    assert {c["bom-ref"] for c in doc["components"]} == closure
    for c in doc["components"]:
        path = props(c)["nix:store_path"]
        assert c["hashes"] == [{"alg": "SHA-256",
                                "content": sha256_hex(nix_store("--query", "--hash", path)[0])}]
        assert props(c)["nix:nar_size"] == nix_store("--query", "--size", path)[0]
    git = by_name(doc)["git"]
    assert (git["version"], git["purl"]) == ("1.0", "pkg:nix/git@1.0")
    assert git["cpe"] == "cpe:2.3:a:git:git:1.0:*:*:*:*:*:*:*"
    busybox = by_name(doc)["busybox"]  # no version: a purl without one, and no CPE
    assert busybox["purl"] == "pkg:nix/busybox" and "cpe" not in busybox


def test_dependencies_are_the_references(built):
    _, _, body = built
    doc = json.loads(body)
    deps = {d["ref"]: set(d.get("dependsOn", ())) for d in doc["dependencies"]}
    for c in doc["components"]:
        path = c["bom-ref"]
        assert deps[path] == set(nix_store("--query", "--references", path)) - {path}
    # the image depends on what was asked for
    assert deps["image"] == {built_path(a) for a in ("git", "hello", "htop")}
    assert doc["metadata"]["component"]["bom-ref"] == "image"


def test_requested_packages_are_marked_and_carry_their_licences(built):
    _, record, body = built
    components = by_name(json.loads(body))
    assert components["hello"]["licenses"] == [{"license": {"id": "GPL-3.0-or-later"}}]
    assert components["git"]["licenses"] == [{"license": {"id": "GPL-2.0-only"}},
                                             {"license": {"id": "LGPL-2.1-or-later"}}]
    # no SPDX id in nixpkgs: the licence by name
    assert components["htop"]["licenses"] == [{"license": {"name": "The test set's own licence"}}]
    for name in ("git", "hello", "htop"):
        assert props(components[name])["nix:requested"] == "true"
        assert props(components[name])["nix:attribute_path"] == name
        assert components[name]["type"] == "application"
    # what Nix did not evaluate is claimed nothing about
    assert "licenses" not in components["libshared"]
    assert "nix:requested" not in props(components["libshared"])
    assert record.licenses == {"git": ["GPL-2.0-only", "LGPL-2.1-or-later"],
                               "hello": ["GPL-3.0-or-later"],
                               "htop": ["The test set's own licence"]}


def test_metadata_names_the_source_and_its_revision(built):
    svc, _, body = built
    meta = json.loads(body)["metadata"]
    revision = svc.revisions.resolve("latest")
    assert props(meta)["nix:package_source"] == svc.source.describe()
    assert props(meta)["nix:revision"] == revision.identity
    assert meta["component"]["type"] == "container"
    assert meta["component"]["version"] == revision.identity.rpartition("@")[2]
    assert meta["timestamp"].startswith("1970-01-01T00:00:01")


def test_the_same_image_gives_the_same_bytes(built, tmp_path):
    _, record, body = built
    again = service(tmp_path)
    other = again.image(again.pinned(Image.from_name("htop/hello/git")), "latest")
    assert other.manifests == record.manifests
    assert again.storage.read(keys.blob(other.sbom["digest"])) == body
    assert json.loads(body)["serialNumber"].startswith("urn:uuid:")


def test_each_manifest_format_has_an_artifact_manifest_naming_it(built):
    svc, record, body = built
    assert set(record.sbom["referrers"]) == {digest_of(record.manifest(t))
                                             for t in (DOCKER_MANIFEST, OCI_MANIFEST)}
    for media_type in (DOCKER_MANIFEST, OCI_MANIFEST):
        subject = digest_of(record.manifest(media_type))
        listed = json.loads(svc.storage.read(keys.referrers(subject)))["manifests"]
        assert listed == [record.sbom["referrers"][subject]]
        artifact = json.loads(svc.storage.read(keys.blob(listed[0]["digest"])))
        assert artifact["artifactType"] == sbom.MEDIA_TYPE == listed[0]["artifactType"]
        assert artifact["subject"] == {"mediaType": media_type, "digest": subject,
                                       "size": len(record.manifest(media_type))}
        assert artifact["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
        assert svc.storage.read(keys.blob(artifact["config"]["digest"])) == b"{}"
        assert artifact["layers"][0]["digest"] == record.sbom["digest"] == digest_of(body)


def test_provenance_labels_and_annotations(built):
    svc, record, _ = built
    config = json.loads(svc.storage.read(keys.blob(record.config["digest"])))
    labels = config["config"]["Labels"]
    revision = svc.revisions.resolve("latest")
    assert labels == {
        "org.opencontainers.image.title": "git/hello/htop",
        "org.opencontainers.image.description": "Nix packages git, hello, htop for linux/amd64",
        "org.opencontainers.image.source": f"file://{revision.nix['path']}",
        "org.opencontainers.image.revision": revision.identity.rpartition("@")[2],
    }
    assert json.loads(record.manifest(OCI_MANIFEST))["annotations"] == labels
    assert "annotations" not in json.loads(record.manifest(DOCKER_MANIFEST))


@pytest.mark.parametrize("name,expected", [
    ("hello-1.0", ("hello", "1.0")),
    ("glibc-2.37-8", ("glibc", "2.37-8")),
    ("bash-interactive-5.2-p15", ("bash-interactive", "5.2-p15")),
    ("busybox", ("busybox", "")),
    ("python3.11-flask-3.0.0", ("python3.11-flask", "3.0.0")),
    ("openssl-3.0.8-bin", ("openssl", "3.0.8-bin")),
])
def test_names_split_as_nix_splits_them(name, expected):
    assert sbom.parse_name(name) == expected


def test_cpe_escapes_what_cpe_escapes():
    assert sbom.cpe("gtk+3", "3.24") == "cpe:2.3:a:gtk\\+3:gtk\\+3:3.24:*:*:*:*:*:*:*"
    assert sbom.cpe("SDL2", "2.0") == "cpe:2.3:a:sdl2:sdl2:2.0:*:*:*:*:*:*:*"
    assert sbom.cpe("busybox", "") is None
    assert sbom.cpe("naïve", "1") is None
