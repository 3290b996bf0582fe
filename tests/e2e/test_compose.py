"""deploy/compose.yaml as shipped, brought up by podman-compose with the
registry's image, and only this machine's changes on top
(tests/e2e/compose.test.yaml): a pull through its nginx, what was pulled
runs, and its gc job collects the shared storage."""
from __future__ import annotations

import json
import os
import sys
import time

import pytest

from tests.conftest import PKGS, ROOT, need
from tests.e2e.conftest import run
from tests.e2e.test_clients import in_root, unpack
from tests.e2e.test_image import busybox

COMPOSE = ROOT / "deploy" / "compose.yaml"
OVERRIDE = ROOT / "tests" / "e2e" / "compose.test.yaml"
PROJECT = "registry-compose-test"
NGINX = "127.0.0.1:8000"  # deploy/nginx.conf's listen, in the registry's network


class Compose:
    def __init__(self, engine, work):
        need("nsenter", "curl")
        self.engine = engine
        # podman-compose runs `podman`: here, with the test run's storage
        self.podman = work / "podman"
        self.podman.write_text("#!/bin/sh\nexec " + " ".join(engine.cmd) + ' "$@"\n')
        self.podman.chmod(0o755)
        self.env = dict(os.environ, REGISTRY_TEST_PKGS=str(PKGS),
                        REGISTRY_TEST_BUSYBOX=busybox())

    def __call__(self, *args, **kwargs):
        compose = os.path.join(os.path.dirname(sys.executable), "podman-compose")
        return run([compose, "--podman-path", str(self.podman), "-p", PROJECT,
                    "-f", str(COMPOSE), "-f", str(OVERRIDE), *args],
                   cwd=COMPOSE.parent, env=self.env, **kwargs)

    def container(self, service) -> str:
        names = self.engine("ps", "--all", "--format", "{{.Names}}", "--filter",
                            f"label=com.docker.compose.project={PROJECT}", "--filter",
                            f"label=com.docker.compose.service={service}").stdout.split()
        assert len(names) == 1, (service, names)
        return names[0]

    def inside(self, *cmd, **kwargs):
        """A host command in the registry's network namespace, where nginx listens."""
        pid = self.engine("inspect", "--format", "{{.State.Pid}}",
                          self.container("registry")).stdout.strip()
        return run(["nsenter", f"--net=/proc/{pid}/ns/net", *cmd], **kwargs)

    def logs(self, service) -> str:
        done = self.engine("logs", self.container(service), check=False)
        return done.stdout + done.stderr


@pytest.fixture(scope="module")
def composed(container_engine, registry_image, tmp_path_factory):
    if container_engine.name != "podman":
        pytest.fail("podman-compose drives podman, which is not installed here "
                    "(make test-deps installs it)")
    compose = Compose(container_engine, tmp_path_factory.mktemp("compose"))
    compose("up", "-d", timeout=600)
    try:
        end = time.monotonic() + 90
        while compose.inside("curl", "--silent", "--output", "/dev/null", "--write-out",
                             "%{http_code}", f"http://{NGINX}/readyz",
                             check=False).stdout != "200":
            if time.monotonic() > end:
                pytest.fail("the registry did not answer through nginx:\n"
                            + compose.logs("registry") + compose.logs("nginx"))
            time.sleep(1)
        yield compose
    finally:
        compose("down", "--volumes", check=False, timeout=300)
        # the anonymous volumes of the image's VOLUMEs in nginx and gc, which
        # podman-compose's down leaves (it removes containers without -v)
        container_engine("volume", "prune", "--force", check=False)
        left = container_engine("ps", "--all", "--quiet", "--filter",
                                f"label=com.docker.compose.project={PROJECT}").stdout
        assert not left.strip()


def test_compose_pulls_through_nginx_and_what_was_pulled_runs(composed, tmp_path):
    composed.inside("skopeo", "copy", "--src-tls-verify=false",
                    f"docker://{NGINX}/shell/hello:latest", f"oci:{tmp_path / 'oci'}:latest")
    rootfs = unpack(tmp_path / "oci", tmp_path / "bundle")
    assert in_root(rootfs, "hello") == "Hello, world!\n"
    # nginx, as the image's user, answered it: from its cache (a small
    # blob the registry sent it once), or a big one's file from the
    # shared volume after the registry's X-Accel-Redirect
    blob = next((tmp_path / "oci" / "blobs" / "sha256").iterdir()).name
    head = composed.inside("curl", "--silent", "--dump-header", "-", "--output", "/dev/null",
                           f"http://{NGINX}/v2/shell/hello/blobs/sha256:{blob}").stdout
    assert head.startswith("HTTP/1.1 200") and "\nServer: nginx" in head, head
    assert f"Docker-Content-Digest: sha256:{blob}" in head
    # what nginx answered from its cache (a blob it kept when skopeo pulled
    # it) is counted by the registry, which reads nginx's reports on the
    # volume they share
    blobs = tmp_path / "oci" / "blobs" / "sha256"
    index = json.loads((tmp_path / "oci" / "index.json").read_text())
    config = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_text())
    small = blobs / config["config"]["digest"].split(":")[1]
    metrics = lambda: composed.inside(  # noqa: E731
        "curl", "--silent", f"http://{NGINX}/metrics").stdout
    before = counted(metrics(), "blob")
    for _ in range(3):
        composed.inside("curl", "--silent", "--fail", "--output", "/dev/null",
                        f"http://{NGINX}/v2/shell/hello/blobs/sha256:{small.name}")
    end = time.monotonic() + 15
    while counted(metrics(), "blob") < before + 3 * small.stat().st_size:
        assert time.monotonic() < end, (metrics()[-2000:], composed.logs("registry"))
        time.sleep(0.5)


def counted(metrics: str, kind: str) -> float:
    """registry_served_bytes_total of `kind` in a /metrics page."""
    for line in metrics.splitlines():
        if line.startswith(f'registry_served_bytes_total{{kind="{kind}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_compose_gc_job_collects_the_shared_storage(composed):
    end = time.monotonic() + 60
    while "deleted 0 objects" not in composed.logs("gc"):
        assert time.monotonic() < end, composed.logs("gc")
        time.sleep(1)
    state = composed.engine("inspect", "--format", "{{.State.Running}}",
                            composed.container("gc")).stdout.strip()
    assert state == "true"  # waiting for the next day's collection
    # its record of the run, where the registry's /metrics reads it
    metrics = composed.inside("curl", "--silent", f"http://{NGINX}/metrics").stdout
    assert "registry_gc_runs_total 1.0" in metrics.splitlines(), metrics[-2000:]
