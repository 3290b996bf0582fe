"""The binary cache the registry fills, with this machine's real Nix: what
it copies is signed, an empty store takes it with the public key and
refuses it with another, and a cache that cannot be written fails nothing."""
import os
import subprocess

import pytest

from builders.nixbuild.nixcache import BinaryCache, NotASecretKey, check_url, public_key
from tests.conftest import PKGS
from tests.nixstore import PrivateStore, keypair


@pytest.fixture(scope="module")
def hello():
    """A built store path of the test package set, with its closure."""
    out = subprocess.run(["nix-build", str(PKGS), "-A", "hello", "--no-out-link"],
                         check=True, capture_output=True, text=True).stdout.strip()
    return out


def _closure(path):
    return subprocess.run(["nix-store", "-qR", path], check=True, capture_output=True,
                          text=True).stdout.split()


def test_public_key_is_the_one_nix_made(tmp_path):
    secret, public = keypair(tmp_path, "registry-test-1")
    with open(secret) as f:
        assert public_key(f.read()) == public
    with pytest.raises(NotASecretKey):
        public_key(public)  # a public key is no secret key


def test_urls_this_nix_can_copy_to():
    for url in ("file:///srv/cache", "ssh://cache.example", "ssh-ng://nix@cache.example"):
        check_url(url)
    for url in ("s3://bucket", "https://cache.example", "/srv/cache"):
        with pytest.raises(ValueError, match="store URL"):
            check_url(url)


def test_a_copied_closure_is_signed_and_substituted_only_with_its_key(hello, tmp_path):
    secret, public = keypair(tmp_path, "registry-test-1")
    _, other = keypair(tmp_path, "registry-test-2")
    cache = BinaryCache(f"file://{tmp_path}/cache", secret)
    status = cache.copy([hello])
    assert status.ok and status.error == ""
    closure = _closure(hello)
    for path in closure:
        info = (tmp_path / "cache" / f"{os.path.basename(path)[:32]}.narinfo").read_text()
        assert f"StorePath: {path}\n" in info
        assert "\nSig: registry-test-1:" in info
    assert cache.status()["last_copy"]["ok"] is True

    def substitute(key, store):
        env = dict(os.environ, NIX_CONFIG=f"substituters = file://{tmp_path}/cache\n"
                   f"trusted-public-keys = {key}\nbuild-users-group =\n")
        return store.run(["nix-store", "--realise", hello], env=env)

    refused = PrivateStore(tmp_path / "store-other-key")
    try:
        done = substitute(other, refused)
        assert done.returncode != 0 and not refused.has(hello), done.stderr
        assert "is not signed by any of the keys in 'trusted-public-keys'" in done.stderr
    finally:
        refused.remove()
    empty = PrivateStore(tmp_path / "store")
    try:
        done = substitute(public, empty)
        assert done.returncode == 0, done.stderr
        assert f"copying path '{hello}' from 'file://{tmp_path}/cache'" in done.stderr
        assert all(empty.has(p) for p in closure)
    finally:
        empty.remove()


def test_a_cache_that_cannot_be_written_fails_nothing(hello, tmp_path):
    secret, _ = keypair(tmp_path, "registry-test-1")
    (tmp_path / "file").write_text("not a folder")
    cache = BinaryCache(f"file://{tmp_path}/file/cache", secret)
    status = cache.copy([hello])
    assert not status.ok and status.error.startswith("nix copy failed: ")
    report = cache.status()
    assert report["failed_copies"] == 1 and report["last_copy"]["ok"] is False
    unreadable = BinaryCache(f"file://{tmp_path}/cache", str(tmp_path / "no-such-key"))
    assert not unreadable.copy([hello]).ok
