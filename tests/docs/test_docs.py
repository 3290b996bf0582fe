"""The documentation says what the code does: the site builds strictly and
loads nothing from the network, every setting the code reads is in the
configuration reference with the code's default, every operator command's
help is the real one, and every error code, failure cause and metric the
code has is documented under its real name.

The getting-started pull itself is run against a real server by
tests/e2e/test_docs_pull.py."""
from __future__ import annotations

import html.parser
import os
import re
import shutil
import subprocess
import sys

import click
import pytest
import yaml

from tests.conftest import ROOT

DOCS = ROOT / "docs"
COMMAND = os.path.join(os.path.dirname(sys.executable), "nix-image-registry")
# the environment of someone who set nothing; click wraps help at 80 columns
EMPTY_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "COLUMNS": "80", "LANG": "C.UTF-8"}


def page(name) -> str:
    return (DOCS / name).read_text()


def all_pages() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(DOCS.glob("*.md"))}


# --- the site ---------------------------------------------------------------

class _Loads(html.parser.HTMLParser):
    """The URLs a page makes the browser load (not the links it shows)."""

    LOADED = {"script": ("src",), "img": ("src", "srcset"), "iframe": ("src",),
              "source": ("src", "srcset"), "video": ("src", "poster"), "audio": ("src",),
              "embed": ("src",), "object": ("data",), "link": ("href",)}

    def __init__(self):
        super().__init__()
        self.urls = []
        self.mermaid = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "mermaid" in (attrs.get("class") or "").split():
            self.mermaid = True
        for name in self.LOADED.get(tag, ()):
            if attrs.get(name):
                self.urls += [part.strip().split(" ")[0] for part in attrs[name].split(",")]


def _external(url: str) -> bool:
    return bool(re.match(r"(?i)(https?:)?//", url.strip()))


def test_the_site_builds_strictly_and_loads_nothing_from_the_network(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(site)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert done.returncode == 0, done.stdout + done.stderr
    pages = sorted(site.glob("*.html"))
    # pages by task: at least eight, each from a file in docs/
    assert len([p for p in pages if p.name != "404.html"]) >= 8
    for html_file in pages:
        parser = _Loads()
        parser.feed(html_file.read_text())
        external = [u for u in parser.urls if _external(u)]
        assert external == [], f"{html_file.name} loads {external}"
        # the theme's bundle fetches mermaid from a CDN for such a diagram:
        # diagrams are text or committed SVG
        assert not parser.mermaid, f"{html_file.name} has a mermaid diagram"
    for css in site.rglob("*.css"):
        text = css.read_text()
        assert not re.search(r"url\(\s*['\"]?(https?:)?//", text), css
        assert not re.search(r"@import\s+(url\()?\s*['\"]?(https?:)?//", text), css
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    assert config["theme"]["font"] == "false"  # no web fonts from Google
    assert "repo_url" not in config  # the theme would ask GitHub's API about it


def test_every_page_is_in_the_navigation():
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)

    def files(nav):
        for entry in nav:
            for value in entry.values():
                yield from files(value) if isinstance(value, list) else [value]
    assert sorted(files(config["nav"])) == sorted(all_pages())


# --- the README: the front door ------------------------------------------------

def test_the_readme_is_short_and_carries_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert len(readme.encode()) <= 14 * 1024
    for line in ("make run", "make test", "make docs",
                 "NIXERY_PKGS_PATH=tests/pkgs NIX_CONFIG='substituters =' make run"):
        assert line in readme
    # the pages it points at exist
    for link in re.findall(r"\(docs/([a-z-]+\.md)[#)]", readme):
        assert (DOCS / link).exists(), link


def test_no_page_names_a_setting_the_code_does_not_read():
    from app.config import RETIRED, VARIABLES
    known = {n for names in VARIABLES.values() for n in names} | set(RETIRED)
    texts = {**all_pages(), "README.md": (ROOT / "README.md").read_text(),
             "bench/README.md": (ROOT / "bench" / "README.md").read_text()}
    for name, text in texts.items():
        unknown = set(re.findall(r"\bNIXERY_[A-Z0-9_]+", text)) - known
        assert not unknown, f"{name} names {sorted(unknown)}, which the registry does not read"


# --- the configuration reference ---------------------------------------------

# Settings whose default depends on the machine or on another setting: a
# word the page's default says it with, and what the code makes of it.
COMPUTED = {
    "NIXERY_PLATFORMS": ("this machine's", lambda cwd: _host_platform()),
    "NIXERY_MAX_BUILDS": ("cores", lambda cwd: str(os.cpu_count())),
    "NIXERY_STATE_PATH": ("`.state`", lambda cwd: os.path.join(cwd, "var", "storage", ".state")),
}
# Read by the programs the registry runs, not by the registry itself: each
# is documented as theirs.
PROGRAMS = {
    "AWS_ENDPOINT_URL_S3": "boto3", "AWS_ENDPOINT_URL": "boto3", "AWS_REGION": "boto3",
    "AWS_ACCESS_KEY_ID": "boto3", "AWS_SECRET_ACCESS_KEY": "boto3", "AWS_PROFILE": "boto3",
    "AWS_ROLE_ARN": "boto3", "AWS_WEB_IDENTITY_TOKEN_FILE": "boto3",
    "AWS_CONFIG_FILE": "boto3", "AWS_MAX_ATTEMPTS": "boto3", "AWS_RETRY_MODE": "boto3",
    "GUNICORN_CMD_ARGS": "gunicorn", "NIX_REMOTE": "Nix", "NIX_SSHOPTS": "Nix",
}


def _host_platform():
    from builders.image import platforms
    return platforms.HOST.name


def _rows(text):
    """The table rows of the page: the cells of each `| ... |` line whose
    first cell is code, the header and separator lines left out."""
    for line in text.splitlines():
        if line.startswith("| `"):
            yield [c.strip() for c in line.strip().strip("|").split(" | ")]


def _settings_tables():
    """(variable, default cell, row) of every settings table, and the
    variables of the table of the programs' own."""
    text = page("configuration.md")
    settings_part, _, programs_part = text.partition("## Read by the programs underneath")
    settings = {}
    for cells in _rows(settings_part):
        name = cells[0].strip("`")
        assert name not in settings, f"{name} is documented twice"
        settings[name] = cells
    programs = {}
    for cells in _rows(programs_part):
        for name in re.findall(r"`([A-Z0-9_]+)`", cells[0]):
            programs[name] = cells[1]
    return settings, programs


def test_every_setting_the_code_reads_is_in_the_configuration_reference():
    from app.config import RETIRED, VARIABLES
    settings, programs = _settings_tables()
    read = {n for names in VARIABLES.values() for n in names}
    assert read - set(settings) == set(), "settings the code reads that the page lacks"
    assert set(settings) - read - set(RETIRED) == set(), \
        "settings the page documents that the code does not read"
    for name in RETIRED:
        assert "no longer read" in settings[name][1]
    assert programs == PROGRAMS


def _config_in(env, cwd):
    done = subprocess.run([COMMAND, "config"], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=60)
    return done


def test_documented_defaults_are_the_codes(tmp_path):
    """Each default on the page is what `nix-image-registry config` prints
    where nothing is set."""
    from app.config import RETIRED, VARIABLES
    done = _config_in(EMPTY_ENV, tmp_path)
    assert done.returncode == 0, done.stderr
    shown = {}
    for line in done.stdout.splitlines():
        name, _, value = line.partition("=")
        shown[name] = value.split("  # default")[0].rstrip()
        assert line.endswith("# default"), line  # nothing was set
    # a second name of a setting shows the same value
    for names in VARIABLES.values():
        for other in names[1:]:
            shown[other] = shown[names[0]]
    settings, _ = _settings_tables()
    cwd = str(tmp_path)
    for name, cells in settings.items():
        if name in RETIRED:
            continue
        default = cells[1]
        literal = re.match(r"`([^`]*)`", default)
        if default.startswith("unset"):
            expected = ""
        elif literal:
            expected = literal.group(1)
            if expected.startswith("./"):
                expected = os.path.join(cwd, expected[2:])
        else:
            assert name in COMPUTED, f"{name}: say its default as `value` or unset"
            word, value = COMPUTED[name]
            assert word in default, f"{name}: {default!r}"
            expected = value(cwd)
        assert shown[name] == expected, f"{name}: the page says {default!r}"


def test_the_configuration_error_the_page_shows_is_the_codes(tmp_path):
    done = _config_in({**EMPTY_ENV, "NIXERY_PULL_WAIT": "soon"}, tmp_path)
    assert done.returncode == 1
    line = done.stderr.strip()
    assert line == "configuration error: NIXERY_PULL_WAIT must be a number, not 'soon'"
    assert line in page("configuration.md")
    assert line in page("troubleshooting.md")


# --- operator commands ------------------------------------------------------

def _command_paths(group=None, prefix=()):
    from app.cli import cli
    group = group or cli
    yield prefix
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _command_paths(command, prefix + (name,))
        else:
            yield prefix + (name,)


def test_every_operator_commands_help_is_in_the_operations_page(tmp_path):
    documented = {
        tuple(m.group(1).split()): m.group(2)
        for m in re.finditer(r"```text\n\$ nix-image-registry ((?:[a-z]+ )*)--help\n(.*?)\n```",
                             page("operations.md"), re.S)}
    paths = list(_command_paths())
    assert sorted(documented) == sorted(paths)
    for path in paths:
        done = subprocess.run([COMMAND, *path, "--help"], env=EMPTY_ENV, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert documented[path] == done.stdout.rstrip("\n"), " ".join(path)
    assert os.listdir(tmp_path) == []  # help makes nothing


# --- errors -----------------------------------------------------------------

def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_error_code_is_in_troubleshooting():
    from app import auth, errors  # noqa: F401 (auth defines UNAUTHORIZED)
    text = page("troubleshooting.md")
    codes = {cls.code for cls in _subclasses(errors.RegistryError)} | {errors.RegistryError.code}
    missing = {c for c in codes if f"`{c}`" not in text and f"### {c} " not in text}
    assert not missing, f"error codes troubleshooting.md does not explain: {missing}"
    statuses = {cls.status for cls in _subclasses(errors.RegistryError)}
    for status in statuses:
        assert str(status) in text


def test_every_cause_of_an_interrupted_build_is_in_troubleshooting():
    import builders
    root = builders.__path__[0]
    causes = set()
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name)) as f:
                    causes |= set(re.findall(r'\bcause="([a-z-]+)"', f.read()))
    assert {"signal", "disk", "nix-daemon", "remote-builder", "no-builder", "setup",
            "nix-gc"} <= causes
    text = page("troubleshooting.md")
    assert {c for c in causes if f"`{c}`" not in text} == set()
    assert {c for c in causes if f"`{c}`" not in page("operations.md")} == set()


def test_every_kind_of_build_failure_is_in_the_metrics_table():
    from builders import errors as e
    from builders.jobs.failures import kind
    samples = [e.PackagesNotFound([("x", [])]), e.PlatformUnsupported("x"),
               e.PackagesRefused("x"), e.PackageUnbuildable("x"), e.BuildFailed("x"),
               e.InvalidImage("x"), e.BuildTimeout(1), e.SourceUnavailable("x"),
               e.BuildInterrupted("x", cause="signal")]
    text = page("operations.md")
    for error in samples:
        k, cause = kind(error)
        assert f"`{k}`" in text
        if k in ("verdict", "machine"):
            assert f"`{cause}`" in text, cause


# --- metrics ----------------------------------------------------------------

class _Storage:
    def read(self, key):
        return b'{"stored": {"layers": {"objects": 1, "bytes": 2}}, "runs": 1}'


def _metrics() -> dict[str, tuple[str, set]]:
    """Every metric the registry exposes, by the name it is queried by:
    (its kind, its label names)."""
    from prometheus_client.metrics import MetricWrapperBase

    from app import metrics as app_metrics
    from builders import metrics as build_metrics
    found = set()
    for module in (app_metrics, build_metrics):
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase) and value._name.startswith("registry_"):
                found.add((value._name, value._type, frozenset(value._labelnames)))
    # (registry_stored_bytes is both a counter, exposed as ..._total, and
    # this collector's gauge)
    for family in app_metrics.StoredCollector(_Storage()).collect():
        found.add((family.name, family.type,
                   frozenset(k for s in family.samples for k in s.labels)))
    names = {}
    for name, kind, labels in found:
        labels = set(labels)
        if kind == "counter":
            names[name + "_total"] = (kind, labels)
        elif kind == "histogram":
            for suffix in ("", "_bucket", "_sum", "_count"):
                names[name + suffix] = (kind, labels | ({"le"} if suffix == "_bucket" else set()))
        else:
            names[name] = (kind, labels)
    return names


def test_every_metric_is_in_the_operations_page_and_every_one_named_exists():
    metrics = _metrics()
    operations = page("operations.md")
    documented = set(re.findall(r"^\| `(registry_[a-z_]+)`(?:, `(registry_[a-z_]+)`)?",
                                operations, re.M))
    in_table = {n for pair in documented for n in pair if n}
    base = {n for n in metrics if not n.endswith(("_bucket", "_sum", "_count"))}
    assert base - in_table == set(), "metrics the operations page's table lacks"
    for name, text in all_pages().items():
        for metric, labels in re.findall(r"\b(registry_[a-z_]+)(?:\{([^}]*)\})?", text):
            assert metric in metrics, f"{name}: {metric} is no metric of the registry"
            used = set(re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=|,|$)", labels.strip()))
            assert used <= metrics[metric][1] | {"instance", "job"}, \
                f"{name}: {metric} has no label {used - metrics[metric][1]}"


def _promql(text):
    """The dashboard queries and the alert rules of the operations page."""
    queries = []
    block = re.search(r"```promql\n(.*?)```", text, re.S).group(1)
    for line in block.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith(" ") and queries:
            queries[-1] += " " + line.strip()
        else:
            queries.append(line.strip())
    rules = yaml.safe_load(re.search(r"checked by tests/docs/test_docs\.py[^\n]*\n```yaml\n(.*?)```",
                                     text, re.S).group(1))
    return queries, rules


def test_the_alert_rules_and_dashboard_queries_are_valid(tmp_path):
    import promql_parser
    queries, rules = _promql(page("operations.md"))
    assert len(queries) >= 8
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert len(alerts) >= 4 and all({"alert", "expr"} <= set(rule) for rule in alerts)
    for expr in queries + [rule["expr"] for rule in alerts]:
        try:
            promql_parser.parse(expr)
        except ValueError as e:
            pytest.fail(f"{expr}: {e}")
    if shutil.which("promtool") is None:
        return  # Prometheus' own check of the rule files, where it is installed
    recorded = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(queries)]}]}
    for name, content in (("alerts.yml", rules), ("dashboards.yml", recorded)):
        path = tmp_path / name
        path.write_text(yaml.safe_dump(content))
        done = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
