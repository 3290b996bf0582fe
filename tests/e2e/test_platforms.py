"""Several platforms from one name, as real clients see them: an index for
those that take one, platform selection by each client's own flag, and
the first platform for everyone else.

The arm64 images are built here from the test package set, whose builder
is the static x86 busybox (Nix builds aarch64-linux derivations with
`extra-platforms`, see tests/conftest.py): they do not run on arm64, and
the tests check what a client selects and stores, not running them.
"""
from __future__ import annotations

import json

import pytest

from tests.conftest import need
from tests.e2e.conftest import registry, run
from tests.e2e.test_clients import in_root, unpack


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    yield from registry(tmp_path_factory, "registry-platforms",
                        NIXERY_PLATFORMS="linux/amd64,linux/arm64")


def raw_index(server, name):
    need("skopeo")
    done = run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                f"docker://{server.host}/{name}:latest"])
    return json.loads(done.stdout)


def member(index, arch):
    return next(m for m in index["manifests"] if m["platform"]["architecture"] == arch)


def config_of(layout, tag="latest"):
    """The image config of an OCI layout's image of `tag`."""
    root = json.loads((layout / "index.json").read_text())
    entry = next(m for m in root["manifests"]
                 if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
    manifest = json.loads((layout / "blobs" / "sha256" / entry["digest"][7:]).read_text())
    return json.loads((layout / "blobs" / "sha256" / manifest["config"]["digest"][7:]).read_text())


def test_skopeo_sees_the_index_and_copies_either_platform(multi, tmp_path):
    index = raw_index(multi, "shell/hello")
    # containers/image lists Docker's manifest list before OCI's index
    assert index["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"
    assert [m["platform"] for m in index["manifests"]] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"}]
    base = ["skopeo", "--override-os", "linux"]
    src = f"docker://{multi.host}/shell/hello:latest"
    run([*base, "--override-arch", "arm64", "copy", "--src-tls-verify=false", src,
         f"oci:{tmp_path / 'arm64'}:latest"])
    config = config_of(tmp_path / "arm64")
    assert (config["architecture"], config["variant"]) == ("arm64", "v8")
    run([*base, "--override-arch", "amd64", "copy", "--src-tls-verify=false", src,
         f"oci:{tmp_path / 'amd64'}:latest"])
    assert config_of(tmp_path / "amd64")["architecture"] == "amd64"
    # the amd64 image is the one that runs here
    rootfs = unpack(tmp_path / "amd64", tmp_path / "bundle")
    assert in_root(rootfs, "hello") == "Hello, world!\n"


def test_podman_pulls_arm64_by_its_arch_flag(multi, podman):
    image = f"{multi.host}/hello:latest"
    run(podman + ["pull", "--tls-verify=false", "--arch", "arm64", image])
    info = json.loads(run(podman + ["image", "inspect", image]).stdout)[0]
    assert info["Architecture"] == "arm64"
    # pulled through the index, by the arm64 entry
    repo = f"{multi.host}/hello@"
    assert set(info["RepoDigests"]) == {repo + _index_digest(multi, "hello"),
                                        repo + member(raw_index(multi, "hello"), "arm64")["digest"]}
    run(podman + ["rmi", image])
    run(podman + ["pull", "--tls-verify=false", "--arch", "amd64", image])
    out = run(podman + ["run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024",
                        "--ulimit", "nproc=1024:1024", image, "hello"]).stdout
    assert out == "Hello, world!\n"


def _index_digest(server, name):
    done = run(["skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}",
                f"docker://{server.host}/{name}:latest"])
    return done.stdout.strip()


def test_docker_pulls_a_platform_from_the_manifest_list(multi, dockerd):
    image = f"{multi.host}/shell/hello:latest"
    run(["docker", "pull", "--platform", "linux/arm64", image], env=dockerd.env)
    info = json.loads(run(["docker", "image", "inspect", image], env=dockerd.env).stdout)[0]
    assert (info["Architecture"], info.get("Variant")) == ("arm64", "v8")
    run(["docker", "pull", "--platform", "linux/amd64", image], env=dockerd.env)
    out = run(["docker", "run", "--rm", "--network", "none", image, "hello"],
              env=dockerd.env).stdout
    assert out == "Hello, world!\n"


def test_containerd_fetches_the_platform_it_is_asked_for(multi, containerd):
    ctr = ["ctr", "--address", containerd.socket]
    image = f"{multi.host}/git:latest"
    index = raw_index(multi, "git")
    run(ctr + ["images", "pull", "--plain-http", "--platform", "linux/arm64", image])
    content = run(ctr + ["content", "ls", "-q"]).stdout.split()
    assert member(index, "arm64")["digest"] in content
    assert member(index, "amd64")["digest"] not in content
    run(ctr + ["images", "pull", "--plain-http", image])  # this machine's platform
    out = run(ctr + ["run", "--rm", image, "e2e-platforms-git", "git"]).stdout
    assert out.startswith("git version 2.0.0")


def test_platforms_a_package_lacks_are_left_out_and_failures_named(multi):
    index = raw_index(multi, "amd64-only")
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64"]
    # a platform that fails to build fails no other platform's pull ...
    index = raw_index(multi, "no-arm")
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64"]
    # ... and a pull of it says why
    done = run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                f"docker://{multi.host}/arm64/no-arm:latest"], check=False)
    assert done.returncode != 0
    assert "package no-arm failed to build" in done.stderr
