"""Runs a command under a deadline and kills its whole process tree on expiry.

`subprocess.run(timeout=...)` kills only the direct child.  Nix's builders
call setsid(), so they are outside the child's process group, and a
builder's own children outlive it once Nix dies.  The tree is therefore
found through /proc (parent links) and frozen before it is killed, so no
process can fork its way out between the snapshot and the kill.

A command also dies with the process that ran it: it is started through
util-linux's `setpriv --pdeathsig TERM`, so the kernel sends it SIGTERM
when its parent (the worker's thread waiting for it) is gone, whatever
killed the worker.  Nix's `timeout` guard (builders/nixbuild/nix.py) passes that on
to its whole process group and follows with SIGKILL, and Nix stops its
builders, so a dead worker leaves no build going on.
"""
from __future__ import annotations

import logging
import errno
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# Enough of a log to say why a build failed, small enough to put in an error.
DEFAULT_TAIL_BYTES = 16 * 1024


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: bytes
    stderr_tail: str


class Timeout(Exception):
    """The command outlived its deadline and its process tree was killed."""

    def __init__(self, cmd, timeout, stderr_tail):
        super().__init__(f"{cmd[0]} exceeded {timeout:.1f}s")
        self.cmd = cmd
        self.timeout = timeout
        self.stderr_tail = stderr_tail


def run(cmd, *, timeout, env=None, cwd=None, tail_bytes=DEFAULT_TAIL_BYTES,
        log_path=None) -> Completed:
    """Run `cmd` (a list, never a shell string) for at most `timeout` seconds.

    stdout is returned whole; stderr goes to a file (appended to `log_path`
    when given, where others may read it as it grows; else an unlinked
    temporary file), so a chatty command can neither deadlock on a full
    pipe nor fill memory, and only its last `tail_bytes` are kept.  Raises
    `Timeout` after killing every process the command started.
    """
    err_file = open(log_path, "a+b") if log_path else tempfile.TemporaryFile()
    with err_file as err:
        start = err.seek(0, os.SEEK_END)
        program = shutil.which(cmd[0], path=(os.environ if env is None else env).get("PATH"))
        if program is None:  # setpriv would run, and say so only as its exit code
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), cmd[0])
        setpriv = shutil.which("setpriv")
        guarded = [setpriv, "--pdeathsig", "TERM", "--", program, *cmd[1:]] if setpriv \
            else list(cmd)
        proc = subprocess.Popen(
            guarded, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
            env=env, cwd=cwd, start_new_session=True)
        try:
            stdout, _ = proc.communicate(timeout=max(timeout, 0.001))
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            proc.communicate()
            raise Timeout(cmd, timeout, _tail(err, start, tail_bytes)) from None
        except BaseException:
            kill_tree(proc.pid)
            proc.communicate()
            raise
        return Completed(proc.returncode, stdout, _tail(err, start, tail_bytes))


def start_time(pid: int) -> int | None:
    """When the process `pid` started, in clock ticks since boot (with its
    pid, it names one process for the machine's uptime), or None when
    there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name may hold spaces and parens: fields after the last ')'
    # start at the third, the state; the start time is the 22nd
    return int(stat[stat.rfind(b")") + 2:].split()[19])


def machine() -> str | None:
    """This machine as its processes see one another: the kernel's boot id
    and the PID namespace (containers on one host share the first, not the
    second); None where /proc does not say."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


def _tail(f, start, n) -> str:
    """The last `n` bytes this command wrote, from offset `start` on."""
    end = f.seek(0, os.SEEK_END)
    f.seek(max(start, end - n))
    data = f.read()
    text = data.decode("utf-8", "replace")
    if end - start > n:
        # drop the partial first line
        text = "…" + text.split("\n", 1)[-1]
    return text


def _children_map():
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name may hold spaces and parens: parse after the last ')'
        fields = stat[stat.rfind(b")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(pid) -> list[int]:
    """Every live process below `pid`, whatever session it moved to."""
    children = _children_map()
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def kill_tree(pid):
    """SIGKILL `pid`, its process group and all of its descendants."""
    frozen = set()
    _signal(pid, signal.SIGSTOP)
    frozen.add(pid)
    # Freeze until no new process appears, so nothing forks past the kill.
    while True:
        new = [p for p in descendants(pid) if p not in frozen]
        if not new:
            break
        for p in new:
            _signal(p, signal.SIGSTOP)
            frozen.add(p)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for p in frozen:
        _signal(p, signal.SIGKILL)
    logger.info("killed process tree of %s (%d processes)", pid, len(frozen))
