"""Builds as jobs of this process: started by a pull, watched by pulls.

A job runs on a thread of its own until its image is built, it fails, or
NIX_TIMEOUT stops its Nix work, whether or not the request that started it
is still connected.  Requests for the same image attach to the running
job and wait for it a bounded time (NIXERY_PULL_WAIT, see
builders/service.py); the job records what it is doing, so a request that
stops waiting can say so.

Job threads are not daemons: a worker that is asked to stop (a HUP, a
deploy) finishes its requests and then waits for its jobs before it exits,
within gunicorn's graceful_timeout (NIX_TIMEOUT + 300 s).
"""
from __future__ import annotations

import contextvars
import logging
import re
import threading
import time

from .. import metrics
from ..errors import BuildError
from ..words import counted

logger = logging.getLogger(__name__)

# What a job does, in order; /metrics counts jobs in each.
# The words are the user's: they end up in a pull's "still building (...)".
WAITING_FOR_ANOTHER = "waiting for the build another pull started"
PHASES = ("starting", WAITING_FOR_ANOTHER, "waiting for a build slot",
          "evaluating", "realising", "making layers", "storing", "waiting for its platforms")

_WILL_BUILD = re.compile(r"^these (\d+) derivations will be built:|^this derivation will be built:")
_WILL_FETCH = re.compile(r"^these (\d+) paths will be fetched|^this path will be fetched")


def realise_progress(log: str) -> tuple[int, int]:
    """(store paths built or fetched so far, of how many), from what
    `nix-store --realise` wrote to the build log."""
    total = done = 0
    for line in log.splitlines():
        m = _WILL_BUILD.match(line) or _WILL_FETCH.match(line)
        if m:
            total += int(m.group(1) or 1)
        elif line.startswith(("building '", "copying path '")):
            done += 1
    return min(done, total), total


class Job:
    """One image being made: its phase, and then its record or its error."""

    def __init__(self, key: str, name: str, tag: str):
        self.key = key
        self.name = name
        self.tag = tag
        self.started = time.monotonic()
        self.phase = None
        self.log_path: str | None = None  # the Nix log, once the build has one
        self.layers_total = 0
        self.layers_done = 0
        self.layer_bytes = 0
        self.parts: dict[str, "Job"] = {}  # an index's jobs, by platform
        self.client = None          # who started it (app/quota.py)
        self.reservation = None     # its room in that client's build quota, once it builds
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._settled = threading.Event()   # done, and its follow-ups too
        self._followups = []
        self._record = None
        self._error: dict | None = None
        self.set_phase("starting")

    def set_phase(self, phase: str) -> None:
        with self._lock:
            if self._done.is_set():
                return
            if self.phase is not None:
                metrics.JOBS.labels(self.phase).dec()
            metrics.JOBS.labels(phase).inc()
            self.phase = phase

    def watch(self, parts: dict[str, "Job"]) -> None:
        """Wait on other jobs (an index's platforms), and say what they do."""
        self.parts = parts
        self.set_phase("waiting for its platforms")

    def layers(self, total: int) -> None:
        self.layers_total, self.layers_done, self.layer_bytes = total, 0, 0

    def layer_done(self, size: int) -> None:
        with self._lock:
            self.layers_done += 1
            self.layer_bytes += size

    def finish(self, record=None, error: BaseException | None = None) -> None:
        with self._lock:
            metrics.JOBS.labels(self.phase).dec()
            self._record = record
            if error is not None:
                self._error = (error.to_dict() if isinstance(error, BuildError) else error)
            self._done.set()

    def after(self, step) -> None:
        """Run `step()` once the job is done and its outcome handed to the
        requests that wait (copying a closure to a binary cache, say): in
        the job's thread, before a stopping worker may exit."""
        self._followups.append(step)

    def run_followups(self) -> None:
        try:
            for step in self._followups:
                try:
                    step()
                except Exception:  # the image is served: a follow-up fails alone
                    logger.exception("a follow-up of the job for %s failed", self.name)
        finally:
            self._settled.set()

    def settle(self, timeout: float) -> bool:
        """Whether the job and its follow-ups ended within `timeout` seconds."""
        return self._settled.wait(timeout)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float) -> bool:
        """Whether the job ended within `timeout` seconds."""
        return self._done.wait(timeout)

    def outcome(self):
        """The record, or raise the job's error (a new exception for each
        request: one object raised by many would grow its traceback)."""
        if isinstance(self._error, dict):
            raise BuildError.from_dict(self._error)
        if self._error is not None:
            try:
                fresh = type(self._error)(*self._error.args)
            except Exception:  # an exception that cannot be made again from its args
                fresh = self._error
            raise fresh
        return self._record

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def progress(self) -> str:
        """What the job is doing, for people, e.g. `realising: started 3 of
        10 store paths to build or fetch`."""
        phase = self.phase
        running = [f"{name}: {part.progress()}" for name, part in self.parts.items()
                   if not part.done]
        if running:
            return "; ".join(running)
        if phase == "realising" and self.log_path:
            try:
                with open(self.log_path, errors="replace") as f:
                    done, total = realise_progress(f.read())
            except OSError:
                total = 0
            if total:
                # Nix logs when it starts a path, not when it is done with it
                return (f"{phase}: started {done} of {counted(total, 'store path')} to build or "
                        "fetch")
        if phase == "making layers" and self.layers_total:
            return (f"{phase}: {self.layers_done} of {self.layers_total} stored, "
                    f"{self.layer_bytes / 1e6:.1f} MB")
        return phase


class Jobs:
    """The jobs of this process, one per image key at a time."""

    def __init__(self):
        self._running: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, key: str, name: str, tag: str, run, *, client=None) -> Job:
        """The running job of `key`, or a new one running `run(job)` ->
        record, started by `client`."""
        with self._lock:
            job = self._running.get(key)
            if job is not None:
                return job
            job = self._running[key] = Job(key, name, tag)
            job.client = client
        # the job's log lines carry the id of the request that started it
        context = contextvars.copy_context()
        threading.Thread(target=context.run, args=(self._run, job, run),
                         name=f"job-{key[:8]}").start()
        return job

    def _run(self, job: Job, run) -> None:
        try:
            record = run(job)
        except BaseException as e:  # every outcome goes to the requests that wait
            job.finish(error=e)
            if not isinstance(e, BuildError):
                logger.exception("the job for %s failed", job.name)
        else:
            job.finish(record=record)
        finally:
            job.run_followups()
            with self._lock:
                del self._running[job.key]
            if job.reservation is not None:
                job.reservation.release()

    def running(self) -> list[Job]:
        with self._lock:
            return list(self._running.values())
