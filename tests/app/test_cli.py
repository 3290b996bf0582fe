"""`nix-image-registry`, the operator's command, as an operator runs it:
configured by the environment alone, from any folder."""
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from app.cli import cli
from app.config import VARIABLES
from tests.conftest import PKGS, ROOT


def invoke(*args, env=None):
    # the runner's environment is the operator's: nothing of the test run's
    clean = {name: None for names in VARIABLES.values() for name in names}
    return CliRunner().invoke(cli, list(args), env={**clean, **(env or {})},
                              catch_exceptions=True)


def test_config_shows_each_setting_once_with_secrets_masked(tmp_path):
    result = invoke("config", env={"NIXERY_PKGS_REPO": "https://me:hunter2@git.example/p.git",
                                   "STORAGE_PATH": str(tmp_path), "NIX_TIMEOUT": "90"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    variables = [line.split("=", 1)[0] for line in lines]
    assert len(variables) == len(set(variables)) == len(VARIABLES)
    assert "NIX_TIMEOUT=90" in lines and f"STORAGE_PATH={tmp_path}" in lines
    assert "NIXERY_PKGS_REPO=https://me:***@git.example/p.git" in lines
    assert "hunter2" not in result.output
    # what nobody set is marked as the default
    port = next(line for line in lines if line.startswith("PORT="))
    assert port.startswith("PORT=8080 ") and port.endswith("# default")


@pytest.mark.parametrize("args", [["config"], ["serve"], ["gc", "--dry-run"],
                                  ["prebuild", "hello"], ["sbom", "hello"],
                                  ["failures", "list"]])
def test_a_bad_setting_is_one_line_from_every_command(args, tmp_path):
    result = invoke(*args, env={"NIXERY_RETENTION": "0", "STORAGE_PATH": str(tmp_path / "s")})
    assert result.exit_code == 1
    assert result.stderr == "configuration error: NIXERY_RETENTION must be a positive number " \
                            "of days, not 0.0\n"
    assert result.stdout == ""
    assert not (tmp_path / "s").exists()  # nothing was started or made


def test_gc_refuses_without_storage_named_and_makes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("gc", "--dry-run")
    assert result.exit_code == 1
    assert "gc deletes from storage, so it needs the storage named: set STORAGE_PATH" \
        in result.stderr
    assert f"the default would be {tmp_path}/var/storage" in result.stderr
    assert os.listdir(tmp_path) == []


def test_gc_collects_the_storage_named(tmp_path):
    result = invoke("gc", "--dry-run", env={"STORAGE_PATH": str(tmp_path / "s"),
                                            "NIXERY_PKGS_PATH": str(PKGS)})
    assert result.exit_code == 0, result.output
    assert "would delete 0 objects, 0 bytes in all" in result.stdout


def test_help_lists_the_commands_and_makes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("--help")
    assert result.exit_code == 0
    listed = result.stdout.split("Commands:")[1].split()
    for command in ("config", "failures", "gc", "prebuild", "sbom", "serve"):
        assert command in listed
    assert "run" not in listed and "shell" not in listed  # Flask's development commands
    assert os.listdir(tmp_path) == []
    version = invoke("--version")
    assert version.stdout.startswith("nix-image-registry, version ")


def test_flask_cli_says_a_bad_setting_in_one_line(tmp_path):
    flask = os.path.join(os.path.dirname(sys.executable), "flask")
    env = dict(os.environ, NIXERY_CLIENT_BUILDS="lots", STORAGE_PATH=str(tmp_path))
    done = subprocess.run([flask, "--app", "app", "gc", "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr == ("configuration error: NIXERY_CLIENT_BUILDS must be two whole "
                           "numbers, builds per hour and at once (e.g. 20,2), not 'lots'\n")
