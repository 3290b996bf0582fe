"""A Nix store of a test's own, for tests that collect garbage.

A collection of the machine's /nix/store would delete what other test runs
on this machine have built and not rooted, possibly while they read it; a
private store (NIX_STORE_DIR and NIX_STATE_DIR in a test's folder) is
collected alone.  Its builds run as the test's user: with Nix's build users
they would share those users with the machine's store, and Nix kills a
build user's processes before it starts a build as that user.
"""
from __future__ import annotations

import os
import subprocess


class PrivateStore:
    def __init__(self, root):
        self.root = str(root)
        self.dir = os.path.join(self.root, "store")
        self.env = {
            "NIX_STORE_DIR": self.dir,
            "NIX_STATE_DIR": os.path.join(self.root, "var"),
            "NIX_LOG_DIR": os.path.join(self.root, "log"),
            "NIX_REMOTE": "local",
            "NIX_CONFIG": os.environ.get("NIX_CONFIG", "") + "\nbuild-users-group =",
        }

    def environ(self, **extra) -> dict:
        return {**os.environ, **self.env, **extra}

    def nix_store(self, *args) -> str:
        done = subprocess.run(["nix-store", *args], capture_output=True, text=True,
                              env=self.environ(), timeout=120)
        if done.returncode:
            raise RuntimeError(f"nix-store {' '.join(args)}: {done.stderr}")
        return done.stdout + done.stderr

    def add(self, folder, name, text) -> str:
        """A new store path holding a file of `text`, rooted by nothing."""
        path = os.path.join(str(folder), name)
        with open(path, "w") as f:
            f.write(text)
        return self.nix_store("--add", path).strip()

    def collect(self) -> str:
        """Nix's collection of every path nothing roots; what it printed."""
        return self.nix_store("--gc")

    def valid(self, path) -> bool:
        done = subprocess.run(["nix-store", "--check-validity", path], capture_output=True,
                              env=self.environ())
        return done.returncode == 0 and os.path.exists(path)


MACHINE_AUTO_ROOTS = "/nix/var/nix/gcroots/auto"


def remove_stale_build_roots(auto=MACHINE_AUTO_ROOTS):
    """Remove the machine store's links to GC roots that registry builds
    made (builders/nix.py Nix.roots: .../gcroots/registry-nix-*/result*)
    and that are gone with their test folders.  Nix itself removes stale
    links when it next collects, which the tests never do to the
    machine's store, so each run would leave hundreds."""
    try:
        names = os.listdir(auto)
    except OSError:
        return
    for name in names:
        link = os.path.join(auto, name)
        try:
            target = os.readlink(link)
        except OSError:
            continue
        if "/gcroots/registry-nix-" in target and not os.path.lexists(target):
            try:
                os.unlink(link)
            except OSError:  # not ours to remove (a Nix daemon's store)
                pass
