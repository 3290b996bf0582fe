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
    ({"NIXERY_COMPRESSOR": "brotli"}, "NIXERY_COMPRESSOR"),
    ({"NIXERY_COMPRESSION_LEVEL": "fast"}, "NIXERY_COMPRESSION_LEVEL"),
    ({"NIXERY_COMPRESSION_LEVEL": "6"}, "NIXERY_COMPRESSION_LEVEL"),  # isal has 0-3
    ({"NIXERY_COMPRESSOR": "zlib", "NIXERY_COMPRESSION_LEVEL": "10"}, "NIXERY_COMPRESSION_LEVEL"),
    ({"NIX_POPULARITY_URL": "ftp://example/pop.json"}, "NIX_POPULARITY_URL"),
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
