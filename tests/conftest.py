"""Shared fixtures: the offline package set, an app, its storage, a real server."""
from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
import threading
import uuid

import pytest

from app import create_app
from app.config import Config

ROOT = pathlib.Path(__file__).resolve().parent.parent
PKGS = ROOT / "tests" / "pkgs"

# No binary cache is reachable here: build everything from the test set.
# aarch64-linux derivations of the test set build here too (their builder
# is the static x86 busybox), for images of several platforms.
os.environ["NIX_CONFIG"] = "substituters =\nextra-platforms = aarch64-linux"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # Each run gets a temporary folder of its own.  With
    # tmp_path_retention_policy = none (setup.cfg) pytest takes no lock on
    # its numbered folder in /tmp/pytest-of-<user>, so a second run on the
    # machine (two checkouts tested at once) would delete the first one's
    # folders under its running servers.  Short: podman's run root must be
    # under 50 characters, a unix socket's path under 108.
    if config.option.basetemp is None:
        config.option.basetemp = config._registry_basetemp = tempfile.mkdtemp(prefix="pytest-")


def pytest_unconfigure(config):
    # pytest removes each test's temporary folder (tmp_path_retention_policy
    # in setup.cfg) but keeps the run's; nothing of a run stays in /tmp
    basetemp = getattr(config, "_registry_basetemp", None)
    if basetemp is not None:
        shutil.rmtree(basetemp, ignore_errors=True)
    # nor in the Nix store's roots: the links to the builds' GC roots
    from tests.nixstore import remove_stale_build_roots
    remove_stale_build_roots()


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def config(tmp_path):
    return Config(pkgs_path=str(PKGS), storage_path=str(tmp_path / "storage"), nix_timeout=120)


@pytest.fixture
def app(config):
    return create_app(config)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def storage(app):
    return app.extensions["storage"]


@pytest.fixture(scope="session")
def pkgs_path():
    return str(PKGS)


def package_set(dest, replacements=()):
    """A copy of the test package set at `dest`, with text replaced, e.g. to
    change what a package prints or to make Nix build it anew."""
    os.makedirs(dest, exist_ok=True)
    text = (PKGS / "default.nix").read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    with open(os.path.join(dest, "default.nix"), "w") as f:
        f.write(text)
    return str(dest)


def drowsy_set(dest, seconds):
    """A copy of the test package set whose `drowsy` takes `seconds` to build,
    and has not been built before (a salt of its own)."""
    return package_set(dest, [("sleep 25 # salt: none",
                                f"sleep {seconds} # salt: {uuid.uuid4().hex}")])


def remote_set(dest):
    """A copy of the test package set whose `remote-only` (built only by a
    remote builder) has not been built before: a salt of its own."""
    return package_set(dest, [("echo salt: none", f"echo salt: {uuid.uuid4().hex}")])


def killed_once_set(dest):
    """A copy of the test package set whose `killed-once` has not been built
    before (a salt of its own), and the marker its first build leaves in
    /tmp before it kills itself; the caller removes the marker."""
    salt = uuid.uuid4().hex
    marker = f"/tmp/registry-killed-once-{salt}"
    return package_set(dest, [("/tmp/registry-killed-once-none", marker)]), marker


def at_once(n, fn):
    """fn(0) ... fn(n - 1), each on a thread of its own, all let go at the
    same moment; their results in that order."""
    barrier = threading.Barrier(n)
    results = [None] * n

    def run(i):
        barrier.wait()
        results[i] = fn(i)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def need(*programs):
    """Fail loudly when a tool the suite relies on is missing (make test installs them)."""
    for program in programs:
        if shutil.which(program) is None:
            pytest.fail(f"{program} is not installed; run the tests with `make test`")


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """fake-gcs-server for the whole session, stopped at its end."""
    from tests.gcs import Emulator
    emulator = Emulator(str(tmp_path_factory.mktemp("fake-gcs-server"))).start()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def gcs_key(tmp_path_factory):
    """A throwaway service-account key that signs URLs for the emulator."""
    from tests.gcs import service_account_key
    return service_account_key(tmp_path_factory.mktemp("gcs-key") / "key.json")


@pytest.fixture
def gcs_bucket(gcs_emulator):
    """A new, empty bucket in the emulator for one test."""
    return gcs_emulator.create_bucket()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server for the whole session, stopped at its end."""
    from tests.s3 import MotoServer
    server = MotoServer(str(tmp_path_factory.mktemp("moto"))).start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A new, empty bucket on moto's server for one test."""
    return s3_server.create_bucket()


@pytest.fixture
def nix_store(tmp_path, monkeypatch):
    """A Nix store of the test's own in its folder (tests/nixstore.py), the
    Nix of this process and its children pointed at it."""
    from tests.nixstore import FolderStore
    private = FolderStore(tmp_path / "nix")
    for name, value in private.env.items():
        monkeypatch.setenv(name, value)
    return private
