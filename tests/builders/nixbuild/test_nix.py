"""The Nix wrapper against real Nix and the offline package set."""
import os
import shutil
import subprocess
import tempfile
import uuid

import pytest

from builders.errors import BuildFailed, BuildInterrupted, BuildTimeout
from builders.nixbuild.closure import parse_path_info
from builders.nixbuild.nix import Deadline, Nix, remove_orphaned_folders
from tests.conftest import PKGS, killed_once_set, package_set

SOURCE = {"type": "path", "path": str(PKGS)}
SYSTEM = "x86_64-linux"


def resolve(*names):
    return Nix().resolve(SOURCE, SYSTEM, [n.split(".") for n in names], Deadline(120))


def test_resolve_reports_every_missing_name_at_once():
    res = resolve("hello", "nosuch", "gti", "langpackages.nope")
    status = {r.requested: r.status for r in res}
    assert status == {"hello": "ok", "nosuch": "missing", "gti": "missing",
                      "langpackages.nope": "missing"}
    gti = next(r for r in res if r.requested == "gti")
    assert "git" in gti.siblings
    nope = next(r for r in res if r.requested == "langpackages.nope")
    assert set(nope.siblings) >= {"foo", "bar"}


def test_resolve_nested_case_insensitive_and_refusals():
    res = {r.requested: r for r in resolve("langpackages.foo", "bashinteractive", "unfree-tool",
                                           "notapackage", "somestring")}
    assert res["langpackages.foo"].attr_path == "langPackages.foo"
    assert res["langpackages.foo"].out.endswith("-lang-foo-1.0")
    assert res["bashinteractive"].attr_path == "bashInteractive"
    assert res["unfree-tool"].status == "error"
    assert res["notapackage"].status == "notDerivation"
    assert res["somestring"].status == "notDerivation"


def test_explain_gives_nix_message():
    nix = Nix()
    why = nix.explain(SOURCE, SYSTEM, [["hello"], ["unfree-tool"]], 1, Deadline(60))
    assert "unfree license" in why and "--show-trace" not in why


def test_aarch64_evaluates_for_that_system():
    res = Nix().resolve(SOURCE, "aarch64-linux", [["hello"]], Deadline(60))
    assert res[0].status == "ok"
    assert res[0].out != resolve("hello")[0].out


def test_realise_and_closure():
    nix = Nix()
    hello = resolve("hello")[0]
    nix.realise({f"{hello.drv}!out": "hello"}, Deadline(120))
    closure = nix.closure([hello.out], Deadline(60))
    paths = {p.path: p for p in closure}
    assert hello.out in paths
    busybox = next(p for p in closure if p.name == "busybox")
    assert busybox.path in paths[hello.out].references
    assert busybox.nar_size > 1_000_000


def test_realise_failure_names_the_package():
    broken = resolve("broken")[0]
    with pytest.raises(BuildFailed) as info:
        Nix().realise({f"{broken.drv}!out": "broken"}, Deadline(120))
    assert "package broken failed to build" in info.value.message
    assert "fails to build on purpose" in info.value.log_tail


def test_a_builder_killed_by_a_signal_is_the_machine_not_the_package(tmp_path):
    pkgs, marker = killed_once_set(tmp_path / "pkgs")
    source = {"type": "path", "path": pkgs}
    try:
        nix = Nix()
        [killed] = nix.resolve(source, SYSTEM, [["killed-once"]], Deadline(120))
        with pytest.raises(BuildInterrupted) as info:
            nix.realise({f"{killed.drv}!out": "killed-once"}, Deadline(120))
        assert info.value.cause == "signal"
        assert info.value.message.startswith(
            "the build of killed-once-1.0 was killed by signal 9 (Killed), which came from "
            "the machine")
        assert "failed due to signal 9 (Killed)" in info.value.log_tail
        # nothing about the package is wrong: built again, it builds
        nix.realise({f"{killed.drv}!out": "killed-once"}, Deadline(120))
        assert os.path.isdir(killed.out)
    finally:
        os.unlink(marker)


def test_a_full_disk_is_the_machine_not_the_package():
    [full] = resolve("disk-full")
    with pytest.raises(BuildInterrupted) as info:
        Nix().realise({f"{full.drv}!out": "disk-full"}, Deadline(120))
    assert info.value.cause == "disk"
    assert info.value.message.startswith(
        "the build machine has no disk space left (No space left on device)")


def test_a_nix_daemon_out_of_reach_is_the_machine_not_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("NIX_REMOTE", f"unix://{tmp_path}/no-daemon-here")
    with pytest.raises(BuildInterrupted) as info:
        resolve("hello")
    assert info.value.cause == "nix-daemon"
    assert info.value.message.startswith(
        f"the Nix daemon cannot be reached ({tmp_path}/no-daemon-here: No such file or "
        "directory)")


def test_no_builder_for_a_platform_or_none_in_reach_is_the_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("NIX_CONFIG", "substituters =")  # no extra-platforms: no aarch64
    # a hello never built here before, for aarch64-linux
    fresh = package_set(tmp_path / "pkgs", [("Hello, world!", f"Hello, {uuid.uuid4().hex}!")])
    [hello] = Nix().resolve({"type": "path", "path": fresh}, "aarch64-linux", [["hello"]],
                            Deadline(60))
    with pytest.raises(BuildInterrupted) as info:
        Nix().realise({f"{hello.drv}!out": "hello"}, Deadline(60))
    assert info.value.cause == "no-builder"
    assert info.value.message == (
        "this registry's Nix cannot build for aarch64-linux (it is x86_64-linux): its "
        "operator must give Nix a binary cache or a builder for aarch64-linux")
    # a remote builder for it that does not answer (nothing listens on port 1)
    monkeypatch.setenv("NIX_CONFIG", "substituters =\n"
                       "builders = ssh://nobody@127.0.0.1 aarch64-linux")
    monkeypatch.setenv("NIX_SSHOPTS", "-p 1 -o ConnectTimeout=5")
    with pytest.raises(BuildInterrupted) as info:
        Nix().realise({f"{hello.drv}!out": "hello"}, Deadline(60))
    assert info.value.cause == "remote-builder"
    assert info.value.message.startswith(
        "Nix's remote builder ssh://nobody@127.0.0.1 for aarch64-linux cannot be reached (")


def test_deadline_is_shared_by_every_command():
    clock = iter([0.0, 0.5, 1.5]).__next__
    d = Deadline(1.0, clock=clock)
    assert d.remaining() == 0.5
    with pytest.raises(BuildTimeout) as info:
        d.remaining()
    assert "NIX_TIMEOUT" in info.value.message


def test_slow_build_times_out_and_leaves_no_build_folder(monkeypatch):
    # where Nix would make its build folder if the registry did not give it
    # one; Nix's build users must be able to reach it
    tmp = tempfile.mkdtemp(prefix="registry-test-")
    os.chmod(tmp, 0o755)
    monkeypatch.setenv("TMPDIR", tmp)
    monkeypatch.setattr(tempfile, "tempdir", tmp)
    try:
        slow = resolve("slow")[0]
        with pytest.raises(BuildTimeout):
            Nix().realise({f"{slow.drv}!out": "slow"}, Deadline(2))
        # the killed build's nix-build-slow-* folder went with the command's own
        assert os.listdir(tmp) == []
    finally:
        shutil.rmtree(tmp)


def test_folders_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    for pid in (dead.pid, os.getpid()):
        os.makedirs(tmp_path / f"registry-nix-{pid}-abc" / "nix-build-x-0")
    (tmp_path / "unrelated").mkdir()
    remove_orphaned_folders(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [f"registry-nix-{os.getpid()}-abc", "unrelated"]


def test_path_info_list_and_object_forms():
    as_list = [{"path": "/nix/store/b-x", "narSize": 5, "references": ["/nix/store/a-y"]},
               {"path": "/nix/store/a-y", "narSize": 7, "references": []}]
    as_object = {"/nix/store/b-x": {"narSize": 5, "references": ["/nix/store/a-y"]},
                 "/nix/store/a-y": {"narSize": 7, "references": []}}
    assert parse_path_info(as_list) == parse_path_info(as_object)
    assert [p.name for p in parse_path_info(as_list)] == ["y", "x"]


def test_names_reach_nix_as_data_never_as_code(tmp_path):
    marker = tmp_path / "evaluated"
    hostile = [f'hello"; builtins.toFile "x" (builtins.readFile {marker}) #', "${abort \"x\"}",
               "a\nb", "__functor"]
    res = resolve(*hostile)
    assert [r.status for r in res] == ["missing"] * len(hostile)
    assert {r.requested for r in res} == set(hostile)
