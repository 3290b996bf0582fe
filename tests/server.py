"""A real gunicorn server on 127.0.0.1 for end-to-end tests."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import requests

from tests.conftest import ROOT


def stop_process(proc, grace):
    """SIGTERM, then after `grace` seconds SIGKILL to the process's whole
    session (every process here is started with start_new_session)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_ready(proc, ready, timeout, interval=0.1) -> bool:
    """Call `ready()` until it is true (True), or until `proc` exits or
    `timeout` seconds pass (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        if ready():
            return True
        time.sleep(interval)
    return False


def answers(url, status=None) -> bool:
    """Whether `url` answers within a second (with `status`, when given)."""
    try:
        r = requests.get(url, timeout=1)
    except (requests.ConnectionError, requests.Timeout):
        return False
    return status is None or r.status_code == status


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Local:
    """A server the tests run on 127.0.0.1, at `port`."""

    port: int

    @property
    def host(self):
        return f"127.0.0.1:{self.port}"

    @property
    def url(self):
        return f"http://{self.host}"


class Server(Local):
    """gunicorn with gunicorn.conf.py, configured through the environment like
    production; `app` another WSGI app than the registry under the same settings."""

    def __init__(self, workdir, app=None, wrap=None, **env):
        self.app = app
        self.wrap = wrap  # argv -> the argv that runs it, e.g. in a namespace
        self.port = free_port()
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.log_path = os.path.join(workdir, "server.log")
        self.env = dict(os.environ, PORT=str(self.port), LISTEN_ADDRESS="127.0.0.1",
                        STORAGE_PATH=os.path.join(workdir, "storage"))
        self.env.update(env)
        self.proc = None
        self.tmp = None

    def start(self, timeout=30):
        # Nix's build folders of this server (builders/nixbuild/nix.py), gone with it
        # even when its workers were killed; Nix's build users must reach it
        self.tmp = tempfile.mkdtemp(prefix="registry-test-")
        os.chmod(self.tmp, 0o755)
        self.env["TMPDIR"] = self.tmp
        self.log = open(self.log_path, "ab")
        gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
        argv = [gunicorn, "-c", "gunicorn.conf.py", *([self.app] if self.app else [])]
        self.proc = subprocess.Popen(self.wrap(argv) if self.wrap else argv, cwd=ROOT,
                                     env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        # a worker still importing the app accepts but answers late
        if wait_ready(self.proc, lambda: answers(self.url + "/healthz", 200), timeout):
            return self
        exited = self.proc.poll()
        self.stop()
        if exited is not None:
            raise RuntimeError(f"gunicorn exited with {exited}:\n{self.read_log()}")
        raise RuntimeError(f"gunicorn did not answer within {timeout}s:\n{self.read_log()}")

    def read_log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_line(self, marker, timeout=10) -> str:
        """The first log line holding `marker`, waiting for it: gunicorn
        writes a request's access line after the client has its answer."""
        end = time.monotonic() + timeout
        while True:
            line = next((l for l in self.read_log().splitlines() if marker in l), None)
            if line is not None or time.monotonic() > end:
                assert line is not None, f"no log line with {marker!r}"
                return line
            time.sleep(0.05)

    def builds(self) -> int:
        """Images this server built, counted from its log."""
        return self.read_log().count("builders.jobs.builds: built ")

    def stop(self):
        if self.proc:
            stop_process(self.proc, 20)
            self.log.close()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
