"""The registry's container image (deploy/Containerfile), built as `make
image` builds it and run as an operator runs it: it serves a pull of the
test package set, what was pulled runs, and it runs as its own user."""
from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from tests.conftest import PKGS
from tests.e2e.test_clients import in_root, skopeo_copy, unpack
from tests.server import Local, answers, free_port

UID = 10001
STORAGE = "/var/lib/nix-image-registry/storage"


def busybox() -> str:
    """The host's static busybox, the test package set's builder."""
    found = shutil.which("busybox") or "/bin/busybox"
    return os.path.realpath(found)


class Container(Local):
    """The image serving on the host's network at a free port, with the
    test package set mounted, its root file system read-only as in the
    Kubernetes Deployment (writable: its volumes, /tmp and its home)."""

    def __init__(self, engine, image):
        self.engine = engine
        self.port = free_port()
        self.name = f"registry-image-test-{self.port}"
        engine("run", "-d", "--name", self.name, "--network", "host", *engine.run_options,
               "--read-only", "--tmpfs", "/tmp", "--tmpfs", "/var/lib/nix-image-registry",
               "-e", f"PORT={self.port}", "-e", "LISTEN_ADDRESS=127.0.0.1",
               "-e", "NIXERY_PKGS_PATH=/pkgs", "-e", "NIX_TIMEOUT=120",
               "-e", "NIX_CONFIG=substituters =",
               "-v", f"{PKGS}:/pkgs:ro", "-v", f"{busybox()}:/usr/bin/busybox:ro", image)
        if not self._wait():
            logs = engine("logs", self.name, check=False)
            self.stop()
            pytest.fail(f"the image did not serve:\n{logs.stdout}\n{logs.stderr}")

    def _wait(self, timeout=90):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if answers(self.url + "/healthz", 200):
                return True
            state = self.engine("inspect", "--format", "{{.State.Running}}", self.name,
                                check=False).stdout.strip()
            if state == "false":
                return False
            time.sleep(0.5)
        return False

    def processes(self) -> dict[int, int]:
        """pid -> real user id of the container's processes, as the host sees them."""
        main = int(self.engine("inspect", "--format", "{{.State.Pid}}", self.name).stdout)
        children = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry))
        found, todo = {}, [main]
        while todo:
            pid = todo.pop()
            try:
                with open(f"/proc/{pid}/status") as f:
                    uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
            except (OSError, StopIteration):
                continue
            found[pid] = uid
            todo.extend(children.get(pid, ()))
        return found

    def stop(self):
        # -v: the anonymous volumes of the image's VOLUMEs go with it
        self.engine("rm", "--force", "--volumes", self.name, check=False)


@pytest.fixture(scope="module")
def served(container_engine, registry_image):
    container = Container(container_engine, registry_image)
    yield container
    container.stop()


def test_image_serves_a_pull_and_what_was_pulled_runs(served, tmp_path):
    skopeo_copy(served, "shell/hello", tmp_path / "oci")
    rootfs = unpack(tmp_path / "oci", tmp_path / "bundle")
    assert in_root(rootfs, "hello") == "Hello, world!\n"
    # built by the image's own Nix, into its /nix volume, and stored there
    listed = served.engine("exec", served.name, "ls", f"{STORAGE}/manifests").stdout.split()
    assert listed
    owner = served.engine("exec", served.name, "stat", "--format", "%u", "/nix/store").stdout
    assert int(owner) == UID


def test_image_runs_as_its_own_user(served):
    processes = served.processes()
    # gunicorn's arbiter and its workers at least
    assert len(processes) >= 3, processes
    assert set(processes.values()) == {UID}, processes
    assert served.engine("exec", served.name, "id", "-un").stdout.strip() == "nix-image-registry"


def test_image_is_configured_as_documented(container_engine, registry_image, served):
    inspected = json.loads(container_engine("image", "inspect", registry_image).stdout)[0]
    config = inspected["Config"]
    assert config["User"] == f"{UID}:{UID}"  # numeric: Kubernetes can check runAsNonRoot
    assert set(config["Volumes"]) == {"/nix", STORAGE}
    assert config["Entrypoint"] == ["nix-image-registry"]
    assert config["Cmd"] == ["serve"]
    # its health check (podman keeps it only with --format docker) passes
    check = config.get("Healthcheck") or inspected.get("Healthcheck")  # docker's, podman's
    kind, command = check["Test"]
    assert kind == "CMD-SHELL" and "/healthz" in command
    served.engine("exec", served.name, "/bin/sh", "-c", command)


def test_image_runs_the_other_commands(container_engine, registry_image, tmp_path):
    done = container_engine("run", "--rm", "--network", "none", *container_engine.run_options,
                            registry_image, "gc", "--dry-run")
    assert "would delete 0 objects" in done.stdout
    # nginx as the Kubernetes sidecar runs it: the image's user and nginx.conf,
    # nothing writable but /tmp and the folder of its reports to the
    # registry (the pod's emptyDir, which the pod's group may write)
    front = tmp_path / "front"
    front.mkdir()
    front.chmod(0o777)
    nginx = container_engine("run", "--rm", "--network", "none", *container_engine.run_options,
                             "--read-only", "--tmpfs", "/tmp",
                             "--volume", f"{front}:/var/lib/nix-image-registry/front",
                             "--entrypoint", "nginx",
                             registry_image, "-e", "stderr", "-t",
                             "-c", "/etc/nix-image-registry/nginx.conf")
    assert "test is successful" in nginx.stderr
