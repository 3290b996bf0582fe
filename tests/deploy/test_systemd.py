"""deploy/systemd/ as systemd takes it: the units verified by
systemd-analyze and their hardening scored, their user made by
systemd-sysusers, gunicorn telling systemd when it listens (Type=notify),
and the collection's Nix part, the unit's own command, run against a store
of its own: a path nothing roots goes, what a running build rooted stays.
(No systemd runs here as PID 1, so the units themselves are not started.)"""
from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys

import requests

from app.config import Config
from builders.nixbuild.nix import Deadline, Nix
from tests.conftest import PKGS, ROOT, need
from tests.e2e.conftest import run
from tests.server import free_port, stop_process

SYSTEMD = ROOT / "deploy" / "systemd"
SERVICE = SYSTEMD / "nix-image-registry.service"
GC = SYSTEMD / "nix-image-registry-gc.service"
TIMER = SYSTEMD / "nix-image-registry-gc.timer"
SYSUSERS = SYSTEMD / "sysusers.d" / "nix-image-registry.conf"
TMPFILES = SYSTEMD / "tmpfiles.d" / "nix-image-registry.conf"
# where docs/deployment.md installs the registry; not on the test machine
COMMAND = "/opt/nix-image-registry/bin/nix-image-registry"


def settings(unit) -> list[tuple[str, str, str]]:
    """(section, key, value) of a unit file, continued lines joined."""
    found, section, pending = [], None, ""
    for raw in unit.read_text().splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        else:
            key, value = line.split("=", 1)
            found.append((section, key.strip(), value.strip()))
    return found


def values(unit, key) -> list[str]:
    return [value for _, k, value in settings(unit) if k == key]


def environment(unit, state) -> dict[str, str]:
    """The unit's Environment= assignments, %S being `state`."""
    env = {}
    for value in values(unit, "Environment"):
        for word in shlex.split(value.replace("%S", str(state))):
            name, assigned = word.split("=", 1)
            env[name] = assigned
    return env


def command(value) -> list[str]:
    """An Exec line as systemd runs it: no prefix, $$ as $, no other
    specifier or variable (those would need systemd itself)."""
    value = value.lstrip("-@:+!")
    assert "%" not in value.replace("%%", "")
    return shlex.split(value.replace("$$", "\0").replace("%%", "%")
                       .replace("\0", "$"))


def test_units_verify_but_for_the_command_missing_here():
    need("systemd-analyze")
    done = run(["systemd-analyze", "verify", SERVICE, GC, TIMER], check=False)
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    if os.path.exists(COMMAND):
        assert complaints == [] and done.returncode == 0
    else:
        assert complaints and all(
            f"Command {COMMAND} is not executable: No such file or directory" in line
            for line in complaints), complaints


def test_services_are_hardened():
    need("systemd-analyze")
    for unit in (SERVICE, GC):
        present = {key: value for _, key, value in settings(unit)}
        assert present["User"] == "nix-image-registry"
        assert present["ProtectSystem"] == "strict"
        assert present["StateDirectory"] == "nix-image-registry"
        assert present["NoNewPrivileges"] == "yes"
        # systemd's own score of the unit's exposure: at most 2.0 of 10
        # ("OK"); --threshold counts in tenths
        run(["systemd-analyze", "security", "--offline=yes", "--threshold=20", unit])
    assert values(TIMER, "OnCalendar") and values(TIMER, "Persistent") == ["true"]


def test_sysusers_makes_the_units_user_at_home_in_its_state(tmp_path):
    need("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    run(["systemd-sysusers", f"--root={tmp_path}", SYSUSERS])
    users = {line.split(":")[0]: line.split(":") for line in
             (tmp_path / "etc" / "passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in
              (tmp_path / "etc" / "group").read_text().splitlines()}
    user = users["nix-image-registry"]
    assert user[5] == "/var/lib/nix-image-registry" and user[6] == "/usr/sbin/nologin"
    assert 0 < int(user[2]) < 1000  # a system user
    # Debian's nix-daemon socket admits nix-users only
    assert "nix-image-registry" in groups["nix-users"][3].split(",")
    assert values(SERVICE, "SupplementaryGroups") == ["nix-users"]


def test_tmpfiles_makes_the_front_reports_file_the_registrys_before_nginx_starts(tmp_path):
    """nginx, as root, would make the file its own, which the registry could
    read but not free; made at boot, it is the registry's and its group's."""
    need("systemd-sysusers", "systemd-tmpfiles")
    (tmp_path / "etc").mkdir()
    run(["systemd-sysusers", f"--root={tmp_path}", SYSUSERS])
    run(["systemd-tmpfiles", f"--root={tmp_path}", "--create", TMPFILES])
    uid = next(int(line.split(":")[2]) for line in
               (tmp_path / "etc" / "passwd").read_text().splitlines()
               if line.startswith("nix-image-registry:"))
    reports = re.search(r"access_log (/\S+) ", (ROOT / "deploy" / "nginx.conf").read_text())[1]
    made = os.stat(str(tmp_path) + reports)
    assert (made.st_uid, made.st_gid, made.st_mode & 0o777) == (uid, uid, 0o660)
    assert f"NIXERY_FRONT_REPORTS={reports}" in SERVICE.read_text()
    assert "tmpfiles.d/nix-image-registry.conf" in SERVICE.read_text()


def test_serve_tells_systemd_when_it_listens(tmp_path):
    """Type=notify: the unit's command and environment, with the socket
    systemd would give it."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(60)
    assert values(SERVICE, "Type") == ["notify"]
    unit_env = environment(SERVICE, tmp_path / "state")
    assert unit_env["LISTEN_ADDRESS"] == "127.0.0.1"
    port = free_port()
    # no Nix daemon runs here: the registry's own store, as the tests use it
    env = {**os.environ, **unit_env, "NOTIFY_SOCKET": str(tmp_path / "notify"),
           "PORT": str(port), "NIXERY_PKGS_PATH": str(PKGS)}
    env.pop("NIX_REMOTE")
    serve = command(values(SERVICE, "ExecStart")[0])
    assert serve == [COMMAND, "serve"]
    installed = os.path.join(os.path.dirname(sys.executable), "nix-image-registry")
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([installed, *serve[1:]], env=env, cwd=tmp_path, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        message = notify.recv(4096).decode()
        assert "READY=1" in message.split("\n")
        # gunicorn says READY=1 once it listens, before its workers are up:
        # a connection made then waits in the listen queue, and is answered
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=60).status_code == 200
    finally:
        stop_process(proc, 30)
        log.close()
        notify.close()


def collect_nix_store(tmp_path, nix_store, **thresholds):
    """The gc unit's Nix part, run with the unit's environment on `nix_store`."""
    nix_part, = [line for line in values(GC, "ExecStart") if "nix-collect-garbage" in line]
    env = nix_store.environ(**{**environment(GC, tmp_path / "state"), **thresholds})
    env["NIX_REMOTE"] = "local"  # the private store, not a daemon's
    return run(command(nix_part), env=env).stdout


def test_gc_unit_collects_the_nix_store_and_keeps_what_a_build_rooted(tmp_path, nix_store):
    assert values(GC, "ExecStart")[0] == f"{COMMAND} gc"
    dead = nix_store.add(tmp_path, "dead", "nothing roots this\n")
    config = Config(pkgs_path=str(PKGS), storage_path=str(tmp_path / "storage"))
    nix = Nix(roots_path=config.gc_roots_path)
    hello, = nix.resolve({"type": "path", "path": str(PKGS)}, "x86_64-linux", [["hello"]],
                         Deadline(120))
    with nix.roots() as building:
        nix.realise({f"{hello.drv}!out": "hello"}, Deadline(120), roots=building)

        # enough space: nothing is collected
        said = collect_nix_store(tmp_path, nix_store, STORE_MIN_FREE_GIB="0")
        assert "nothing to collect" in said
        assert nix_store.valid(dead)

        # short of space (less free than asked for): what nothing roots goes
        said = collect_nix_store(tmp_path, nix_store, STORE_MIN_FREE_GIB="1000000",
                                 STORE_MAX_FREE_GIB="2000000")
        assert "collecting" in said
        assert not nix_store.valid(dead)
        assert nix_store.valid(hello.out)
    # the build is done: its output is garbage too
    collect_nix_store(tmp_path, nix_store, STORE_MIN_FREE_GIB="1000000",
                      STORE_MAX_FREE_GIB="2000000")
    assert not nix_store.valid(hello.out)
