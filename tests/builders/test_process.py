import os
import signal
import subprocess
import sys
import time

import pytest

from builders import process
from tests.conftest import ROOT


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_returns_stdout_and_stderr_tail():
    done = process.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    assert done.returncode == 3
    assert done.stdout == b"out\n"
    assert done.stderr_tail == "err\n"


def test_megabytes_of_stderr_do_not_deadlock_and_keep_only_the_tail():
    script = "i=0; while [ $i -lt 100000 ]; do echo line $i >&2; i=$((i+1)); done; echo done"
    done = process.run(["sh", "-c", script], timeout=60, tail_bytes=1000)
    assert done.stdout == b"done\n"
    assert done.stderr_tail.endswith("line 99999\n")
    assert len(done.stderr_tail) <= 1001
    assert done.stderr_tail.startswith("…line ")


def test_timeout_kills_children_that_left_the_session(tmp_path):
    pidfile = tmp_path / "pids"
    # a grandchild in a session of its own, like a Nix builder, and its child
    script = (f"setsid sh -c 'sleep 300 & echo $! >> {pidfile}; echo $$ >> {pidfile}; wait' & "
              f"echo $! >> {pidfile}; sleep 300")
    started = time.monotonic()
    with pytest.raises(process.Timeout) as info:
        process.run(["sh", "-c", script], timeout=1.5)
    assert time.monotonic() - started < 10
    assert info.value.timeout == 1.5
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) == 3
    time.sleep(0.2)
    assert [p for p in pids if alive(p)] == []


def test_descendants_finds_grandchildren():
    proc = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"])
    try:
        time.sleep(0.3)
        assert len(process.descendants(proc.pid)) == 2
    finally:
        process.kill_tree(proc.pid)
        proc.wait()
    assert process.descendants(proc.pid) == []


def test_missing_program_raises_file_not_found():
    with pytest.raises(FileNotFoundError):
        process.run(["/nonexistent/program"], timeout=5)


def running_sleep(pid):
    def comm(p):
        try:
            with open(f"/proc/{p}/comm") as f:
                return f.read().strip()
        except OSError:
            return None
    return [comm(p) for p in process.descendants(pid)] == ["sleep"]


def test_a_command_dies_with_the_process_that_ran_it(tmp_path):
    # a worker running a command on a thread of its own, then killed
    code = ("import sys, threading; from builders import process; "
            "threading.Thread(target=process.run, args=(['sleep', '300'],), "
            "kwargs={'timeout': 300}).start(); print('running', flush=True)")
    worker = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert worker.stdout.readline() == "running\n"
        # killed once the command runs: before setpriv has exec'd it, the
        # death signal is not set up yet (a window of microseconds, which a
        # loaded machine widens enough for this test to hit)
        end = time.monotonic() + 10
        while not running_sleep(worker.pid):
            assert time.monotonic() < end
            time.sleep(0.05)
        [sleep] = process.descendants(worker.pid)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        end = time.monotonic() + 10
        while alive(sleep):
            assert time.monotonic() < end, "the command outlived the process that ran it"
            time.sleep(0.05)
    finally:
        worker.kill()
        worker.wait()
        worker.stdout.close()
