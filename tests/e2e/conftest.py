"""Servers for end-to-end tests: the registry under gunicorn, and private
containerd and dockerd daemons, each on this machine only and stopped after."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import PKGS, need
from tests.server import Server, stop_process, wait_ready


def run(cmd, *, check=True, timeout=300, **kwargs):
    """Run a client command; its output is part of the failure message."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {done.returncode}:\n"
                    f"{done.stdout}\n{done.stderr}")
    return done


def registry(tmp_path_factory, folder, **env):
    """A registry on the test package set, for a fixture to yield from."""
    srv = Server(str(tmp_path_factory.mktemp(folder)),
                 **{"NIXERY_PKGS_PATH": str(PKGS), "NIX_TIMEOUT": "120", **env}).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    yield from registry(tmp_path_factory, "registry")


@pytest.fixture(scope="session")
def slow_server(tmp_path_factory):
    """A registry whose NIX_TIMEOUT is short enough to hit on purpose."""
    yield from registry(tmp_path_factory, "registry-timeout", NIX_TIMEOUT="4")


class Daemon:
    def __init__(self, cmd, socket, log_path, tmpdir=None):
        self.socket = socket
        self.log_path = log_path
        self.log = open(log_path, "wb")
        # what a daemon writes to its temporary folder (containerd's goroutine
        # dump, /tmp/containerd.<pid>.stacks.log) stays in the test's folder
        env = None if tmpdir is None else dict(os.environ, TMPDIR=str(tmpdir))
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=env)

    def wait_for(self, probe, timeout=60):
        if wait_ready(self.proc, lambda: os.path.exists(self.socket) and probe().returncode == 0,
                      timeout, interval=0.2):
            return self
        self.stop()
        with open(self.log_path, errors="replace") as f:
            pytest.fail(f"{self.proc.args[0]} did not start:\n{f.read()[-4000:]}")

    def stop(self):
        stop_process(self.proc, 30)
        self.log.close()


@pytest.fixture(scope="session")
def containerd(tmp_path_factory):
    need("containerd", "ctr", "runc")
    d = tmp_path_factory.mktemp("containerd")
    sock = str(d / "containerd.sock")
    daemon = Daemon(["containerd", "--root", str(d / "root"), "--state", str(d / "state"),
                     "--address", sock], sock, str(d / "containerd.log"), tmpdir=d)
    daemon.wait_for(lambda: run(["ctr", "--address", sock, "version"], check=False))
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory):
    need("dockerd", "docker")
    # short path: unix socket paths are limited to 108 bytes
    d = tmp_path_factory.mktemp("dockerd")
    sock = str(d / "docker.sock")
    daemon = Daemon(["dockerd", "--data-root", str(d / "root"), "--exec-root", str(d / "exec"),
                     "--pidfile", str(d / "docker.pid"), "--host", f"unix://{sock}",
                     "--iptables=false", "--ip6tables=false", "--bridge=none",
                     "--storage-driver=vfs"], sock, str(d / "dockerd.log"))
    daemon.env = dict(os.environ, DOCKER_HOST=f"unix://{sock}")
    daemon.wait_for(lambda: run(["docker", "version"], check=False, env=daemon.env))
    yield daemon
    daemon.stop()
    shutil.rmtree(d / "root", ignore_errors=True)


@pytest.fixture(scope="session")
def podman(tmp_path_factory):
    need("podman", "runc")
    d = tmp_path_factory.mktemp("podman")
    # --tmpdir: podman's default, /run/libpod, is every podman's on the
    # machine; another test run's `system reset` removed it under this one,
    # whose podman then took the machine for rebooted and failed to write
    # /run/libpod/alive
    base = ["podman", "--root", str(d / "root"), "--runroot", str(d / "run"),
            "--tmpdir", str(d / "tmp"), "--storage-driver", "vfs",
            "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime", "runc"]
    yield base
    run(base + ["system", "reset", "--force"], check=False)


def source_tree(dest) -> str:
    """The checkout's files as git sees them (tracked, and new ones not
    ignored), copied to `dest`: building from a copy leaves the checkout
    clean (setuptools writes build/ and *.egg-info beside its sources)."""
    from tests.conftest import ROOT
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                 cwd=ROOT).stdout.split("\0")
    for name in filter(None, listed):
        if os.path.isfile(ROOT / name):
            os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
            shutil.copy2(ROOT / name, os.path.join(dest, name))
    return str(dest)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory):
    """The registry's wheel and a wheel of everything it needs, built as
    `make wheelhouse` builds them: what an offline install takes."""
    import sys
    work = tmp_path_factory.mktemp("wheelhouse")
    src = source_tree(work / "src")
    house = work / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(house), src],
        timeout=900)
    return house


class Engine:
    """podman or docker, as the tests run it here: `cmd` its command with
    the test run's own storage and daemon, `run_options` what `run` needs
    on this machine (crun and the default limits fail in this sandbox)."""

    def __init__(self, name, cmd, env=None):
        self.name = name
        self.cmd = list(cmd)
        self.env = env
        self.run_options = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]

    def __call__(self, *args, **kwargs):
        return run(self.cmd + list(args), env=self.env, **kwargs)


@pytest.fixture(scope="session")
def container_engine(request):
    """podman (with the `podman` fixture's private storage), else a private
    dockerd; where neither is installed the tests that need one fail (the
    Makefile installs both), rather than pass unseen as skipped."""
    if shutil.which("podman"):
        return Engine("podman", request.getfixturevalue("podman"))
    if shutil.which("docker") and shutil.which("dockerd"):
        daemon = request.getfixturevalue("dockerd")
        return Engine("docker", ["docker"], env=daemon.env)
    pytest.fail("neither podman nor docker is installed (make test-deps installs both): "
                "the registry's image cannot be "
                "built or run here")


@pytest.fixture(scope="session")
def registry_image(container_engine, wheelhouse, tmp_path_factory):
    """The registry's image, nix-image-registry:latest, built once per run
    as `make image` builds it (scripts/build-image, offline but for Debian's
    archive), from a copy of the checkout and the run's wheelhouse."""
    work = tmp_path_factory.mktemp("image")
    src = source_tree(work / "src")
    shutil.copytree(wheelhouse, os.path.join(src, "dist", "wheelhouse"))
    tmp = work / "tmp"  # mmdebstrap's, gone with the run
    tmp.mkdir()
    env = dict(container_engine.env or os.environ, ENGINE=" ".join(container_engine.cmd),
               TMPDIR=str(tmp))
    if container_engine.name == "podman":
        # no layer of each step (each a whole copy with the vfs driver here):
        # the image is built once per run, no cache is reused
        env["BUILD_OPTIONS"] = "--layers=false"
    run([os.path.join(src, "scripts", "build-image")], cwd=src, env=env, timeout=1500)
    shutil.rmtree(src)
    return "nix-image-registry:latest"
