"""What the benchmarks share: tool checks, the servers they start, wrk, and
sampling the memory of gunicorn's workers."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

from tests.conftest import PKGS
from tests.server import Server, answers, free_port, stop_process, wait_ready

HERE = os.path.dirname(os.path.abspath(__file__))
DEBS = "wrk nginx docker-registry skopeo"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def need(*programs):
    """Stop with what to install: the benchmarks install nothing themselves."""
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: run `make bench`, or "
                 f"`apt-get install {DEBS}` (nginx and docker-registry are "
                 "only started by the benchmark, on 127.0.0.1)")


def registry(workdir, **env) -> Server:
    """Our registry under gunicorn.conf.py, as `make run` starts it, serving
    the offline package set from its own empty storage."""
    env.setdefault("NIXERY_PKGS_PATH", str(PKGS))
    env.setdefault("NIX_CONFIG", "substituters =")  # no binary cache is reachable
    return Server(workdir, **env)


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def servers(prefix, *, keep=False):
    """A work folder, and a list the run appends the servers it starts to:
    however the run ends, they are stopped, last first, and the folder is
    removed (or kept, and named, with `keep`); a SIGTERM (kill, pkill)
    ends the run the same way instead of leaving its servers behind."""
    workdir = tempfile.mkdtemp(prefix=prefix)
    stack = []
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield workdir, stack
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        for proc in reversed(stack):
            proc.stop()
        if keep:
            print(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


class Process:
    """A baseline server in its own session, stopped with its whole group."""

    def __init__(self, cmd, log_path, **popen):
        self.log = open(log_path, "wb")
        self.log_path = log_path
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, **popen)

    def wait_http(self, url, timeout=30):
        if wait_ready(self.proc, lambda: answers(url), timeout):
            return self
        self.stop()
        with open(self.log_path, errors="replace") as f:
            sys.exit(f"{self.proc.args[0]} did not start:\n{f.read()[-3000:]}")

    def stop(self):
        stop_process(self.proc, 15)
        self.log.close()


_RESULT_RE = re.compile(r"^wrk-result (.*)$", re.M)


def wrk(url, *, connections, seconds, threads=2, headers=(), script=None, timeout_s=10,
        extra=(), env=None) -> dict:
    """Run wrk against `url`; the numbers its Lua `done` printed, plus its stdout.

    wrk stops by itself after `seconds`; the subprocess timeout is a second
    bound in case it does not.
    """
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", f"--timeout={timeout_s}s",
           "-s", script or os.path.join(HERE, "report.lua")]
    for h in headers:
        cmd += ["-H", h]
    cmd += [*extra, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + timeout_s + 60,
                          env=env)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    m = _RESULT_RE.search(done.stdout)
    if not m:
        sys.exit(f"wrk printed no result line:\n{done.stdout}\n{done.stderr}")
    result = {}
    for pair in m.group(1).split():
        key, value = pair.split("=", 1)
        try:
            result[key] = int(value)
        except ValueError:
            result[key] = value  # lists a script printed, e.g. status:count pairs
    result["stdout"] = done.stdout
    seconds_run = result["duration_us"] / 1e6
    result["rps"] = result["requests"] / seconds_run
    result["mb_s"] = result["bytes"] / seconds_run / 1e6
    return result


def children(pid) -> list[int]:
    """Direct children of `pid` (gunicorn's workers, not their Nix subprocesses)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # the command name may hold spaces; the ppid follows its ')'
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(entry))
    return found


def status_kib(pid, field) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class RssSampler:
    """Samples the resident memory of each worker of a gunicorn master while
    a run goes on; `peaks` is the highest sample per worker pid, `hwm` the
    kernel's own high-water mark (VmHWM) read at the last sample."""

    def __init__(self, master_pid, interval=0.2):
        self.master = master_pid
        self.interval = interval
        self.peaks: dict[int, int] = {}
        self.hwm: dict[int, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                self.sample()
                return

    def sample(self):
        self.samples += 1
        for pid in children(self.master):
            rss = status_kib(pid, "VmRSS")
            if rss is not None:
                self.peaks[pid] = max(self.peaks.get(pid, 0), rss)
            hwm = status_kib(pid, "VmHWM")
            if hwm is not None:
                self.hwm[pid] = hwm


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def ms(us) -> str:
    return f"{us / 1000:.1f} ms"


__all__ = ["need", "registry", "Process", "wrk", "RssSampler", "children", "median", "ms",
           "free_port", "DOCKER_MANIFEST", "OCI_MANIFEST", "PKGS"]
