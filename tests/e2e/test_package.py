"""The registry as an operator installs it: its wheel into an empty venv,
served and collected by the installed `nix-image-registry` command from a
folder that is not the checkout."""
from __future__ import annotations

import glob
import os
import subprocess
import zipfile

import pytest

from tests.conftest import PKGS, ROOT
from tests.e2e.conftest import run
from tests.e2e.test_clients import in_root, skopeo_copy, unpack
from tests.server import Local, answers, free_port, stop_process, wait_ready


@pytest.fixture(scope="module")
def installed(wheelhouse, tmp_path_factory):
    """An empty venv with the registry installed from the wheelhouse alone."""
    venv = tmp_path_factory.mktemp("venv")
    run(["python3", "-m", "venv", str(venv)])
    run([venv / "bin" / "pip", "install", "--quiet", "--no-index", "--find-links", wheelhouse,
         "nix-image-registry"], timeout=600)
    return venv


def test_the_wheel_carries_the_code_expressions_and_templates(wheelhouse):
    wheel, = glob.glob(str(wheelhouse / "nix_image_registry-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    checkout = {os.path.relpath(p, ROOT) for pattern in ("app/**/*.py", "builders/**/*.py",
                                                          "storage/**/*.py", "app/templates/*")
                for p in glob.glob(str(ROOT / pattern), recursive=True)}
    assert checkout and checkout <= names, checkout - names
    assert "builders/nixexpr/image.nix" in names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)


class Installed(Local):
    """`nix-image-registry serve` of the installed venv, started in `cwd`."""

    def __init__(self, venv, cwd, env):
        self.port = free_port()
        self.env = {**env, "PORT": str(self.port)}
        self.log_path = os.path.join(cwd, f"serve-{self.port}.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([venv / "bin" / "nix-image-registry", "serve"], cwd=cwd,
                                     env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        if not wait_ready(self.proc, lambda: answers(self.url + "/healthz", 200), 60):
            self.stop()
            with open(self.log_path, errors="replace") as f:
                pytest.fail(f"the installed registry did not start:\n{f.read()[-4000:]}")

    def stop(self):
        stop_process(self.proc, 20)
        self.log.close()


def operator_env(home, storage):
    """The environment an operator's shell would have: nothing of this
    checkout or of the test run's Python."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "XDG_RUNTIME_DIR", "PORT", "STORAGE_PATH")}
    return {**env, "HOME": str(home), "LISTEN_ADDRESS": "127.0.0.1", "STORAGE_PATH": str(storage),
            "NIXERY_PKGS_PATH": str(PKGS), "NIX_TIMEOUT": "120"}


def test_installed_wheel_serves_a_pull_and_collects_from_another_folder(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = operator_env(tmp_path / "home", tmp_path / "storage")
    where = run([installed / "bin" / "python", "-c", "import app, builders; "
                 "print(app.__file__); print(builders.__file__)"], cwd=elsewhere, env=env).stdout
    assert all(path.startswith(str(installed)) for path in where.split())

    first = Installed(installed, elsewhere, env)
    # a second registry of the same user on the same machine
    second = Installed(installed, elsewhere, {**env, "STORAGE_PATH": str(tmp_path / "other")})
    try:
        skopeo_copy(first, "shell/hello", tmp_path / "oci")
        rootfs = unpack(tmp_path / "oci", tmp_path / "bundle")
        assert in_root(rootfs, "hello") == "Hello, world!\n"
        assert answers(second.url + "/v2/", 200)
        # its workers count together: the pull and the build are in /metrics
        import requests
        metrics = requests.get(first.url + "/metrics", timeout=10).text
        assert 'registry_builds_total{outcome="built"}' in metrics
        assert 'registry_http_requests_total{method="GET",route="registry.blobs"' in metrics
        # no gunicorn control socket for the two of them to share
        assert not os.path.exists(tmp_path / "home" / ".gunicorn")
    finally:
        second.stop()
        first.stop()

    gc = run([installed / "bin" / "nix-image-registry", "gc", "--dry-run"], cwd=elsewhere, env=env)
    assert "would delete 0 objects" in gc.stdout
    shown = run([installed / "bin" / "nix-image-registry", "config"], cwd=elsewhere, env=env)
    assert f"STORAGE_PATH={tmp_path / 'storage'}" in shown.stdout.splitlines()
    assert not os.path.exists(elsewhere / "var")


def test_installed_command_says_a_bad_setting_in_one_line(installed, tmp_path):
    env = {**operator_env(tmp_path / "home", tmp_path / "storage"), "NIXERY_MAX_BUILDS": "lots"}
    for args in (["serve"], ["config"], ["gc", "--dry-run"]):
        done = run([installed / "bin" / "nix-image-registry", *args], cwd=tmp_path, env=env,
                   check=False)
        assert done.returncode == 1, args
        assert done.stderr == "configuration error: NIXERY_MAX_BUILDS must be a whole number, not 'lots'\n"
        assert done.stdout == ""
    refused = run([installed / "bin" / "nix-image-registry", "gc"], cwd=tmp_path, check=False,
                  env={k: v for k, v in operator_env(tmp_path / "h", "x").items()
                       if k != "STORAGE_PATH"})
    assert refused.returncode == 1 and "needs the storage named" in refused.stderr
