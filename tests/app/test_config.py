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
    assert (c.port, c.nix_timeout, c.pkgs_path, c.gcs_bucket) == (9000, 2.5, str(tmp_path), "b")
    assert c.effective_channel is None
    assert isinstance(sources.from_config(c), sources.PathSource)
    assert Config.from_env({"GCS_BUCKET": "a", "BUCKET": "b"}).gcs_bucket == "a"


def test_gcs_values_from_the_environment(tmp_path):
    key = tmp_path / "key.json"
    key.write_text("{}")
    c = Config.from_env({"NIXERY_STORAGE_BACKEND": "gcs", "GCS_BUCKET": "images",
                         "GOOGLE_APPLICATION_CREDENTIALS": str(key),
                         "STORAGE_EMULATOR_HOST": "127.0.0.1:4443", "GCS_RETRY_SECONDS": "5"})
    assert (c.gcs_bucket, c.google_credentials, c.gcs_retry_seconds) == ("images", str(key), 5)
    # a bare host:port, as the Google libraries accept it
    assert c.gcs_endpoint == "http://127.0.0.1:4443"
    assert Config.from_env({"NIXERY_STORAGE_BACKEND": "gcs", "BUCKET": "b"}).gcs_endpoint is None


@pytest.mark.parametrize("env,names", [
    ({"PORT": "eighty"}, "PORT"),
    ({"PORT": "70000"}, "PORT"),
    ({"NIX_TIMEOUT": "0"}, "NIX_TIMEOUT"),
    ({"NIX_TIMEOUT": "soon"}, "NIX_TIMEOUT"),
    ({"NIXERY_STORAGE_BACKEND": "s3"}, "NIXERY_STORAGE_BACKEND"),
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
    from builders.compress import DEFAULT, KINDS, Compression
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


def test_nix_settings_are_read_for_the_failures_they_decide():
    c = Config.from_env({"NIX_CONFIG": "substituters =\nmax-jobs = 2",
                         "NIX_CONF_DIR": "/etc/nix-registry"})
    assert c.nix_config == "substituters =\nmax-jobs = 2"
    assert c.nix_conf_dir == "/etc/nix-registry"
    assert Config.from_env({}).nix_conf_dir == "/etc/nix"
