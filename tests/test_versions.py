"""setup.cfg's version ranges are what the tests run: the installed Python
and gunicorn satisfy them, and they allow nothing the code cannot run on."""
import configparser
import importlib.metadata
import platform
import re

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from tests.conftest import ROOT


def _options():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg["options"]


def _requirement(name) -> Requirement:
    lines = [line.strip() for line in _options()["install_requires"].splitlines()]
    return next(Requirement(line) for line in lines
                if line and not line.startswith("#") and Requirement(line).name == name)


def test_python_range_is_the_one_tested_and_excludes_310():
    python = SpecifierSet(_options()["python_requires"])
    assert platform.python_version() in python
    # app/http/http1.py's possessive quantifiers are new in 3.11
    assert "3.10.14" not in python
    assert re.compile(r"a++b").fullmatch("aab")


def test_gunicorn_is_pinned_to_a_range_holding_the_installed_release():
    gunicorn = _requirement("gunicorn")
    installed = importlib.metadata.version("gunicorn")
    assert installed in gunicorn.specifier
    # an upper bound: the next major release is not taken untested
    assert any(spec.operator == "<" for spec in gunicorn.specifier)
