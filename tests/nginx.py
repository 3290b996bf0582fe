"""deploy/nginx.conf as an operator uses it: its four marked values set for
this machine, and nothing else changed but where its pid and temporary
files go (one set per nginx on a machine, as the file's header says)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

import requests

from tests.conftest import ROOT, need
from tests.server import Local, free_port, stop_process, wait_ready

CONF = ROOT / "deploy" / "nginx.conf"
# the comment that marks each value an operator sets, and the directive it is on
MARKS = {"# what clients reach": "listen", "# where gunicorn listens": "server",
         "# STORAGE_PATH": "alias", "# NIXERY_FRONT_REPORTS": "access_log"}
RUNTIME_PREFIX = "/tmp/nginx-registry"


def render(*, listen, upstream: str, storage_root: str, runtime: str,
           reports: str | None = None) -> str:
    """The shipped file with `listen` (an address, or a list of them), the
    upstream `server`, the blob `alias` and where the reports go (the
    registry's NIXERY_FRONT_REPORTS: a file, by default one under `runtime`
    nobody reads, or HOST:PORT, which makes the access_log the syslog one
    the file's header gives) set on the lines their comments mark, and its
    pid and temporary files under `runtime`."""
    addresses = [listen] if isinstance(listen, str) else list(listen)
    values = {"listen": "; listen ".join(addresses), "server": upstream,
              "alias": storage_root.rstrip("/") + "/"}
    reports = reports or os.path.join(runtime, "reports")
    text = CONF.read_text()
    assert RUNTIME_PREFIX in text
    text = text.replace(RUNTIME_PREFIX, os.path.join(runtime, "nginx-registry"))
    for mark, directive in MARKS.items():
        pattern = re.compile(rf"^(\s*){directive}\s([^;]*);(\s*{re.escape(mark)}.*)$",
                             re.MULTILINE)
        found = pattern.findall(text)
        assert len(found) == 1, f"deploy/nginx.conf marks one `{directive}` with {mark!r}"
        if directive == "access_log":  # only where the reports go
            _, rest = found[0][1].split(None, 1)
            if not reports.startswith("/"):  # syslog lines are not buffered
                rest = " ".join(w for w in rest.split() if not w.startswith(("buffer=", "flush=")))
                # the form the file's header gives for an nginx on another machine
                syslog = "syslog:server=HOST:PORT,tag=registry_front,nohostname"
                comments = " ".join(line.lstrip("# ") for line in text.splitlines()
                                    if line.startswith("#"))
                assert f"access_log {syslog} {rest};" in " ".join(comments.split())
                reports = syslog.replace("HOST:PORT", reports)
            values[directive] = f"{reports} {rest}"
        text = pattern.sub(lambda m: f"{m[1]}{directive} {values[directive]};{m[3]}", text)
    return text


def open_folder(prefix: str) -> str:
    """A new folder under /tmp that any user may enter (pytest's are 0700):
    for what nginx's workers read as a user of their own."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(path, 0o755)
    return path


class Nginx(Local):
    """Debian's nginx with deploy/nginx.conf on 127.0.0.1 (and `also` other
    local addresses, on the same port, e.g. `[::1]`): started by root (its
    workers then run as nginx's default user, nobody), or, with `as_user`,
    by that user from the start."""

    def __init__(self, upstream, storage_root, as_user=None, also=(), reports=None):
        need("nginx")
        self.port = free_port()
        self.dir = open_folder("nginx-registry-test-")
        if as_user:
            shutil.chown(self.dir, user=as_user)
        self.conf = os.path.join(self.dir, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(render(listen=[f"{a}:{self.port}" for a in ("127.0.0.1", *also)],
                           upstream=upstream, storage_root=storage_root, runtime=self.dir,
                           reports=reports))
        os.chmod(self.conf, 0o644)
        self.log_path = os.path.join(self.dir, "stderr.log")
        self.log = open(self.log_path, "wb")
        command = ["nginx", "-c", self.conf, "-g", "daemon off;"]
        if as_user:
            command = ["setpriv", f"--reuid={as_user}", "--regid=nogroup", "--clear-groups",
                       *command]
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        # /healthz: /v2/ asks for credentials when pulls need them
        if not wait_ready(self.proc, lambda: _answers(self.url + "/healthz"), 20):
            errors = self.read_errors()  # before stop() removes its folder
            self.stop()
            raise RuntimeError(f"nginx did not start:\n{errors}")

    def workers(self) -> set[str]:
        """The users nginx's worker processes run as."""
        done = subprocess.run(["ps", "-o", "user=,args=", "--ppid", str(self._master())],
                              capture_output=True, text=True)
        return {line.split()[0] for line in done.stdout.splitlines() if "worker" in line}

    def _master(self) -> int:
        with open(os.path.join(self.dir, "nginx-registry.pid")) as f:
            return int(f.read())

    def read_errors(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def stop(self):
        stop_process(self.proc, 10)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _answers(url):
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False
