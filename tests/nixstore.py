"""Nix stores of their own for tests.

PrivateStore is an empty store mounted over /nix in a new mount namespace
(`unshare -m`), as another machine's store would be: the same store paths
as this machine's.  FolderStore is a store in a test's folder
(NIX_STORE_DIR), its own paths, for collecting garbage alone.
"""
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


class RemoteBuilder:
    """Another machine for Nix's remote builds, on this one: sshd on a free
    loopback port in a mount namespace with its own empty /nix and its own
    /etc/nix, reached as root with a key the test makes.  It builds for
    x86_64-linux and says it has the system feature `registry-builder`,
    which this machine's Nix lacks: a derivation that requires it can only
    have been built there."""

    FEATURE = "registry-builder"

    def __init__(self, folder):
        from tests.server import free_port
        need("sshd", "ssh", "ssh-keygen")
        self.folder = str(folder)
        self.store = PrivateStore(os.path.join(self.folder, "nix"))
        self.port = free_port()
        conf = os.path.join(self.folder, "etc-nix")
        os.makedirs(conf, exist_ok=True)
        with open(os.path.join(conf, "nix.conf"), "w") as f:
            f.write(f"sandbox = false\nsubstituters =\nbuild-users-group =\n"
                    f"system-features = {self.FEATURE}\n")
        self.key = os.path.join(self.folder, "client_key")
        host_key = os.path.join(self.folder, "host_key")
        for key in (self.key, host_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key],
                           check=True)
        shutil.copy(self.key + ".pub", os.path.join(self.folder, "authorized_keys"))
        config = os.path.join(self.folder, "sshd_config")
        with open(config, "w") as f:
            f.write(f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
                    f"AuthorizedKeysFile {self.folder}/authorized_keys\n"
                    "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                    "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
                    f"PidFile {self.folder}/sshd.pid\n")
        # sshd's privilege separation folder, made at boot where it runs as a service
        self._made_run = not os.path.isdir("/run/sshd")
        os.makedirs("/run/sshd", exist_ok=True)
        self.log = open(os.path.join(self.folder, "sshd.log"), "ab")
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        self._argv = self.store.wrap([sshd, "-D", "-e", "-f", config],
                                     extra_mounts=[(conf, "/etc/nix")])
        self.proc = None
        self.start()

    def start(self):
        """Start its sshd (again, after `down()`), on the same port."""
        from tests.server import wait_ready
        self.proc = subprocess.Popen(self._argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        if not wait_ready(self.proc, lambda: self.ssh("true").returncode == 0, 20, 0.2):
            self.stop()
            raise RuntimeError("the builder's sshd did not start")

    def down(self):
        """Stop its sshd, as a builder machine that went away: its store stays."""
        from tests.server import stop_process
        stop_process(self.proc, 10)

    @property
    def ssh_options(self) -> str:
        """NIX_SSHOPTS for it (Nix 2.8 takes no port in a builder's URL)."""
        return (f"-p {self.port} -i {self.key} -o IdentitiesOnly=yes "
                "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR")

    @property
    def machine(self) -> str:
        """Its line in Nix's `builders` setting."""
        return f"ssh://root@127.0.0.1 x86_64-linux {self.key} 2 1 {self.FEATURE}"

    def ssh(self, command) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", *self.ssh_options.split(), "root@127.0.0.1", command],
                              capture_output=True, text=True, timeout=30)

    def stop(self):
        self.down()
        self.log.close()
        self.store.remove()
        if self._made_run:
            shutil.rmtree("/run/sshd", ignore_errors=True)


class FolderStore:
    """A Nix store of a test's own in a folder (NIX_STORE_DIR and
    NIX_STATE_DIR there), for tests that collect garbage: a collection of
    the machine's /nix/store would delete what other test runs on this
    machine have built and not rooted, possibly while they read it.  Its
    builds run as the test's user: with Nix's build users they would share
    those users with the machine's store, and Nix kills a build user's
    processes before it starts a build as that user.  (Its paths are not
    /nix/store paths: for a store that holds the machine's own paths, see
    PrivateStore.)"""

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
    made (builders/nixbuild/nix.py Nix.roots: .../gcroots/registry-nix-*/result*)
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
