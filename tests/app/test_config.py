import os

import pytest

from app.config import DEFAULT_CHANNEL, Config, ConfigError
from builders import sources


def test_defaults_match_nixery(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = Config.from_env({})
    assert c.port == 8080 and c.nix_timeout == 60
    assert c.storage_backend == "filesystem"
    assert c.storage_path == str(tmp_path / "var" / "storage")
    assert c.effective_channel == DEFAULT_CHANNEL
    assert isinstance(sources.from_config(c), sources.ChannelSource)


def test_values_from_the_environment(tmp_path):
    c = Config.from_env({"PORT": "9000", "NIX_TIMEOUT": "2.5", "NIXERY_PKGS_PATH": str(tmp_path),
                         "STORAGE_PATH": str(tmp_path / "s"), "BUCKET": "b"})
    assert (c.port, c.nix_timeout, c.pkgs_path, c.bucket) == (9000, 2.5, str(tmp_path), "b")
    assert c.effective_channel is None
    assert isinstance(sources.from_config(c), sources.PathSource)
    assert Config.from_env({"GCS_BUCKET": "a", "BUCKET": "b"}).bucket == "a"


def test_gcs_values_from_the_environment(tmp_path):
    key = tmp_path / "key.json"
    key.write_text("{}")
    c = Config.from_env({"NIXERY_STORAGE_BACKEND": "gcs", "GCS_BUCKET": "images",
                         "GOOGLE_APPLICATION_CREDENTIALS": str(key),
                         "STORAGE_EMULATOR_HOST": "127.0.0.1:4443", "GCS_RETRY_SECONDS": "5"})
    assert (c.bucket, c.google_credentials, c.gcs_retry_seconds) == ("images", str(key), 5)
    # a bare host:port, as the Google libraries accept it
    assert c.gcs_endpoint == "http://127.0.0.1:4443"
    assert Config.from_env({"NIXERY_STORAGE_BACKEND": "gcs", "BUCKET": "b"}).gcs_endpoint is None


@pytest.mark.parametrize("env,names", [
    ({"PORT": "eighty"}, "PORT"),
    ({"PORT": "70000"}, "PORT"),
    ({"NIX_TIMEOUT": "0"}, "NIX_TIMEOUT"),
    ({"NIX_TIMEOUT": "soon"}, "NIX_TIMEOUT"),
    ({"NIXERY_STORAGE_BACKEND": "s3"}, "NIXERY_STORAGE_BACKEND=s3 needs BUCKET"),
    ({"NIXERY_STORAGE_BACKEND": "azure"}, "NIXERY_STORAGE_BACKEND"),
    ({"NIXERY_STORAGE_BACKEND": "gcs"}, "GCS_BUCKET"),
    ({"NIXERY_PKGS_PATH": "/does/not/exist"}, "NIXERY_PKGS_PATH"),
    ({"NIXERY_CHANNEL": "nixos-unstable", "NIXERY_PKGS_REPO": "https://x/y.git"},
     "NIXERY_CHANNEL and NIXERY_PKGS_REPO"),
    ({"NIXERY_MAX_LAYERS": "1"}, "NIXERY_MAX_LAYERS"),
    ({"NIXERY_CHANNEL": "nixos unstable; rm"}, "NIXERY_CHANNEL"),
    ({"NIXERY_ARCHIVE_URL": "https://example.org/nixpkgs.tar.gz"}, "NIXERY_ARCHIVE_URL"),
    ({"NIXERY_SOURCE_REFRESH": "-1"}, "NIXERY_SOURCE_REFRESH"),
    ({"NIXERY_CHANNEL": "a", "NIXERY_PKGS_REPO": "b", "NIXERY_PKGS_PATH": "/"},
     "NIXERY_CHANNEL and NIXERY_PKGS_REPO and NIXERY_PKGS_PATH"),
    ({"NIXERY_STORAGE_BACKEND": "gcs", "BUCKET": "b", "GCS_RETRY_SECONDS": "0"},
     "GCS_RETRY_SECONDS"),
    ({"NIXERY_STORAGE_BACKEND": "gcs", "BUCKET": "b", "GCS_RETRY_SECONDS": "a while"},
     "GCS_RETRY_SECONDS"),
    ({"NIXERY_STORAGE_BACKEND": "gcs", "BUCKET": "b", "STORAGE_EMULATOR_HOST": "ftp://x"},
     "STORAGE_EMULATOR_HOST"),
    ({"NIXERY_STORAGE_BACKEND": "gcs", "BUCKET": "b",
      "GOOGLE_APPLICATION_CREDENTIALS": "/no/such/key.json"}, "GOOGLE_APPLICATION_CREDENTIALS"),
    ({"NIXERY_COMPRESSOR": "brotli"}, "NIXERY_COMPRESSOR"),
    ({"NIXERY_COMPRESSION_LEVEL": "fast"}, "NIXERY_COMPRESSION_LEVEL"),
    ({"NIXERY_COMPRESSION_LEVEL": "6"}, "NIXERY_COMPRESSION_LEVEL"),  # isal has 0-3
    ({"NIXERY_COMPRESSOR": "zlib", "NIXERY_COMPRESSION_LEVEL": "10"}, "NIXERY_COMPRESSION_LEVEL"),
    ({"NIX_POPULARITY_URL": "ftp://example/pop.json"}, "NIX_POPULARITY_URL"),
    ({"NIXERY_PULL_WAIT": "-1"}, "NIXERY_PULL_WAIT"),
    ({"NIXERY_PULL_WAIT": "a minute"}, "NIXERY_PULL_WAIT"),
    ({"NIXERY_FAILURE_TTL": "-5"}, "NIXERY_FAILURE_TTL"),
    ({"NIXERY_BUILD_LEASE": "1"}, "NIXERY_BUILD_LEASE"),
    ({"NIXERY_STRICT_TAGS": "sometimes"}, "NIXERY_STRICT_TAGS"),
    ({"NIXERY_CHANNELS": "nixos-24.05, bad channel"}, "NIXERY_CHANNELS"),
    ({"NIXERY_COMMIT_CHECK_URL": "https://example.org/compare"}, "NIXERY_COMMIT_CHECK_URL"),
])
def test_bad_values_name_the_variable(env, names):
    with pytest.raises(ConfigError) as info:
        Config.from_env(env)
    assert names in str(info.value)


def test_layer_compression_settings():
    from builders.layers.compress import DEFAULT, KINDS, Compression
    assert Config.from_env({}).compression == Compression(DEFAULT, KINDS[DEFAULT].default)
    c = Config.from_env({"NIXERY_COMPRESSOR": "zlib", "NIXERY_COMPRESSION_LEVEL": "9",
                         "NIX_POPULARITY_URL": "file:///srv/popularity.json"})
    assert c.compression == Compression("zlib", 9)
    assert c.popularity_url == "file:///srv/popularity.json"


def test_gunicorn_refuses_to_start_with_a_bad_value(tmp_path):
    import subprocess
    import sys
    import os
    from tests.conftest import ROOT
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    done = subprocess.run([gunicorn, "-c", "gunicorn.conf.py"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, NIX_TIMEOUT="never"))
    assert done.returncode != 0
    assert "NIX_TIMEOUT" in done.stderr and "Traceback" not in done.stderr


def test_gunicorn_waits_for_builds(tmp_path):
    """Worker timeout and graceful shutdown cover a whole build and its upload."""
    import json as _json
    import os
    import subprocess
    import sys
    from tests.conftest import ROOT
    code = ("import runpy, json; c = runpy.run_path('gunicorn.conf.py'); "
            "print(json.dumps({k: c[k] for k in ('timeout', 'graceful_timeout', "
            "'forwarded_allow_ips', 'logger_class', 'bind')}))")
    env = {k: v for k, v in os.environ.items() if k != "LISTEN_ADDRESS"}
    env.update(NIX_TIMEOUT="100", FORWARDED_ALLOW_IPS="10.0.0.1,10.0.0.2",
               LOG_FORMAT="json", STORAGE_PATH=str(tmp_path), PORT="9999")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True).stdout
    conf = _json.loads(out)
    assert conf["timeout"] >= 100 + 60 and conf["graceful_timeout"] >= 100
    assert conf["forwarded_allow_ips"] == "10.0.0.1,10.0.0.2"
    assert conf["logger_class"] == "app.logs.JsonAccessLogger"
    assert conf["bind"] == ["0.0.0.0:9999"]


class _Recording(dict):
    """An environment that notes every variable asked for."""

    def __init__(self, *args):
        super().__init__(*args)
        self.asked = set()

    def get(self, name, default=None):
        self.asked.add(name)
        return super().get(name, default)


def test_every_setting_has_its_variable_listed():
    import dataclasses
    from app.config import RETIRED, VARIABLES
    env = _Recording()
    Config.from_env(env)
    listed = {name for names in VARIABLES.values() for name in names}
    assert env.asked == listed | set(RETIRED)
    derived = {"storage_chosen"}
    assert set(VARIABLES) == {f.name for f in dataclasses.fields(Config)} - derived


@pytest.mark.parametrize("variable", sorted(
    {name for names in __import__("app.config").config.VARIABLES.values() for name in names}))
def test_any_value_is_taken_or_refused_in_one_line(variable):
    """Whatever an operator writes, start-up either takes it or says what is
    wrong with it: never another exception (a traceback)."""
    from hypothesis import given, settings, strategies as st

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(st.one_of(st.text(max_size=20), st.sampled_from(
        ["0", "-1", "1e999", "nan", "inf", "*", "a,b", "0.0.0.0/33", "/nonexistent",
         "http://[::1", "linux/amd64,", "9" * 30, "\x00", "tests"])))
    def check(value):
        try:
            Config.from_env({variable: value})
        except ConfigError as e:
            assert "\n" not in e.format_message()
    check()


@pytest.mark.parametrize("url,shown", [
    ("https://user:s3cret@git.example/pkgs.git", "https://user:***@git.example/pkgs.git"),
    ("https://ghp_token@github.com/org/pkgs", "https://***@github.com/org/pkgs"),
    ("https://example.org/pop.json?token=abc&v=2", "https://example.org/pop.json?token=***&v=2"),
    ("ssh://git@github.com/org/pkgs", "ssh://git@github.com/org/pkgs"),
    ("file:///srv/pkgs", "file:///srv/pkgs"),
    ("/srv/pkgs", "/srv/pkgs"),
])
def test_secrets_in_urls_are_masked(url, shown):
    from app.settings import mask
    assert mask(url) == shown


def test_describe_says_what_is_in_effect_and_what_was_set(tmp_path):
    env = {"NIXERY_PKGS_REPO": "https://me:pw@git.example/pkgs.git", "PORT": "9000",
           "BUCKET": "images", "NIXERY_STORAGE_BACKEND": "gcs"}
    rows = {v: (value, chosen) for v, value, chosen in Config.from_env(env).describe(env)}
    assert rows["PORT"] == ("9000", True)
    assert rows["NIX_TIMEOUT"] == ("60", False)
    assert rows["NIXERY_PKGS_REPO"] == ("https://me:***@git.example/pkgs.git", True)
    assert "GCS_BUCKET" not in rows and rows["BUCKET"] == ("images", True)


def test_storage_is_chosen_only_when_named(tmp_path):
    assert not Config.from_env({}).storage_chosen
    assert not Config.from_env({"NIXERY_STORAGE_BACKEND": "filesystem"}).storage_chosen
    assert Config.from_env({"STORAGE_PATH": str(tmp_path)}).storage_chosen
    assert Config.from_env({"NIXERY_STORAGE_BACKEND": "gcs", "BUCKET": "b"}).storage_chosen


def test_storage_group_is_a_group_of_this_machine():
    import grp
    group = grp.getgrgid(os.getgid()).gr_name
    assert Config.from_env({"NIXERY_STORAGE_GROUP": group}).storage_gid == os.getgid()
    assert Config.from_env({"NIXERY_STORAGE_GROUP": "4242"}).storage_gid == 4242
    with pytest.raises(ConfigError, match="NIXERY_STORAGE_GROUP 'no-such-group' is no group"):
        Config.from_env({"NIXERY_STORAGE_GROUP": "no-such-group"})
    with pytest.raises(ConfigError, match="NIXERY_STORAGE_GROUP is for the filesystem"):
        Config.from_env({"NIXERY_STORAGE_GROUP": group, "NIXERY_STORAGE_BACKEND": "gcs",
                         "BUCKET": "b"})


def test_nix_cache_needs_a_readable_key(tmp_path):
    from tests.nixstore import keypair
    secret, public = keypair(tmp_path, "cache-1")
    c = Config.from_env({"NIXERY_NIX_CACHE": f"file://{tmp_path}/cache",
                         "NIXERY_NIX_CACHE_KEY": secret})
    assert c.nix_cache_public_key == public
    key_row = next(r for r in c.describe({"NIXERY_NIX_CACHE_KEY": secret})
                   if r[0] == "NIXERY_NIX_CACHE_KEY")
    assert key_row[1] == f"{secret}  (public key {public})"
    for env, message in [
        ({"NIXERY_NIX_CACHE": f"file://{tmp_path}/c"}, "NIXERY_NIX_CACHE needs NIXERY_NIX_CACHE_KEY"),
        ({"NIXERY_NIX_CACHE": "s3://bucket", "NIXERY_NIX_CACHE_KEY": secret},
         "NIXERY_NIX_CACHE 's3://bucket' must be a store URL"),
        ({"NIXERY_NIX_CACHE": f"file://{tmp_path}/c", "NIXERY_NIX_CACHE_KEY": "/no/key"},
         "NIXERY_NIX_CACHE_KEY '/no/key' cannot be read: No such file or directory"),
        ({"NIXERY_NIX_CACHE": f"file://{tmp_path}/c",
          "NIXERY_NIX_CACHE_KEY": str(tmp_path / "cache-1.pub")}, "is not a Nix secret key"),
        ({"NIXERY_NIX_CACHE_KEY": secret}, "NIXERY_NIX_CACHE_KEY is set but NIXERY_NIX_CACHE is not"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Config.from_env(env)


def _gunicorn_conf(tmp_path, **env) -> dict:
    """The settings gunicorn.conf.py gives gunicorn in this environment."""
    import json as _json
    import os
    import subprocess
    import sys
    from tests.conftest import ROOT
    code = ("import runpy, json; c = runpy.run_path('gunicorn.conf.py'); "
            "print(json.dumps({k: c[k] for k in ('worker_class', 'forwarded_allow_ips')}))")
    full = {k: v for k, v in os.environ.items()
            if k not in ("LISTEN_ADDRESS", "FORWARDED_ALLOW_IPS", "NIXERY_HTTP_WORKER")}
    full.update(STORAGE_PATH=str(tmp_path), **env)
    return _json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full,
                                      capture_output=True, text=True, check=True).stdout)


def test_the_http_worker_is_the_registrys_or_gunicorns_stock_one(tmp_path):
    assert Config.from_env({}).http_worker == "registry"
    assert _gunicorn_conf(tmp_path)["worker_class"] == "app.http.worker.Worker"
    assert Config.from_env({"NIXERY_HTTP_WORKER": "gthread"}).http_worker == "gthread"
    assert _gunicorn_conf(tmp_path, NIXERY_HTTP_WORKER="gthread")["worker_class"] == "gthread"


def test_another_http_worker_stops_gunicorn_with_one_line_naming_it(tmp_path):
    import os
    import subprocess
    import sys
    from tests.conftest import ROOT
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    done = subprocess.run([gunicorn, "-c", "gunicorn.conf.py"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60,
                          env=dict(os.environ, NIXERY_HTTP_WORKER="eventlet",
                                   STORAGE_PATH=str(tmp_path)))
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "configuration error: NIXERY_HTTP_WORKER must be registry (the registry's own worker) "
        "or gthread (gunicorn's stock one), not 'eventlet'"]


def test_the_configuration_imports_no_metrics():
    """gunicorn's settings read the configuration before they set
    prometheus_client's multiprocess folder: had anything imported
    prometheus_client by then, every worker's counters would be its own."""
    import subprocess
    import sys
    from tests.conftest import ROOT
    from tests.nixstore import keypair
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        secret, _ = keypair(folder, "k")
        code = ("import sys; from app.config import Config; "
                f"Config.from_env({{'NIXERY_NIX_CACHE': 'file:///c', 'NIXERY_NIX_CACHE_KEY': {secret!r}}}); "
                "import app.http.gunicorn_conf, app.http.serving; print('prometheus_client' in sys.modules)")
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                              text=True, check=True)
    assert done.stdout.strip() == "False"


def test_nix_settings_are_read_for_the_failures_they_decide():
    c = Config.from_env({"NIX_CONFIG": "substituters =\nmax-jobs = 2",
                         "NIX_CONF_DIR": "/etc/nix-registry"})
    assert c.nix_config == "substituters =\nmax-jobs = 2"
    assert c.nix_conf_dir == "/etc/nix-registry"
    assert Config.from_env({}).nix_conf_dir == "/etc/nix"
