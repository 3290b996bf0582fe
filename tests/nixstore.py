"""Nix stores of their own for tests: a private /nix in a new mount
namespace (`unshare -m`), as another machine's empty store would be."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess

from tests.conftest import need


def keypair(folder, name):
    """A binary cache signing key made by Nix: (secret key file, public key)."""
    need("nix-store")
    secret, public = os.path.join(folder, f"{name}.sec"), os.path.join(folder, f"{name}.pub")
    subprocess.run(["nix-store", "--generate-binary-cache-key", name, secret, public],
                   check=True, capture_output=True)
    with open(public) as f:
        return secret, f.read().strip()


class PrivateStore:
    """An empty Nix store at `root`, mounted over /nix for the commands run
    in it (each in a new mount namespace: this machine's /nix is untouched)."""

    def __init__(self, root):
        need("unshare")
        self.root = str(root)
        os.makedirs(self.root, exist_ok=True)

    def wrap(self, argv, extra_mounts=()) -> list[str]:
        """`argv` run with this store over /nix (and `extra_mounts`, pairs of
        a folder and where it goes)."""
        mounts = [(self.root, "/nix"), *extra_mounts]
        script = " && ".join(f"mount --bind {shlex.quote(src)} {shlex.quote(dst)}"
                             for src, dst in mounts)
        return ["unshare", "-m", "--propagation", "private", "sh", "-c",
                f"{script} && exec \"$@\"", "sh", *map(str, argv)]

    def run(self, argv, *, env=None, timeout=120) -> subprocess.CompletedProcess:
        return subprocess.run(self.wrap(argv), env=env, capture_output=True, text=True,
                              timeout=timeout)

    def has(self, store_path) -> bool:
        return os.path.exists(os.path.join(self.root, "store", os.path.basename(store_path)))

    def remove(self):
        shutil.rmtree(self.root, ignore_errors=True)
