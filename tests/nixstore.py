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
