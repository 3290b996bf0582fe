"""The checks of a configuration: every value, alone and with the others,
and the normal form of some (absolute paths, ...).  A wrong one stops the
server at start with a ConfigError that names its variable.
"""
from __future__ import annotations

import grp
import os
import re
import urllib.parse

from builders.layers import compress

from .proxy import Proxies
from .settings import HTTP_WORKERS, STORAGE_BACKENDS, ConfigError, host_port

CHANNEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _scheme(url: str) -> str | None:
    try:
        return urllib.parse.urlsplit(url).scheme
    except ValueError:  # e.g. an unclosed [ of an IPv6 address
        return None


def check(config) -> None:
    """Check every value of `config` (a Config), and put some in their normal
    form (absolute paths, ...); ConfigError naming the variable of the first
    that is wrong."""
    if not 0 < config.port < 65536:
        raise ConfigError(f"PORT must be between 1 and 65535, not {config.port}")
    if not config.nix_timeout > 0:
        raise ConfigError(f"NIX_TIMEOUT must be a positive number of seconds, not {config.nix_timeout}")
    if config.storage_backend not in STORAGE_BACKENDS:
        raise ConfigError(
            f"NIXERY_STORAGE_BACKEND must be one of {', '.join(STORAGE_BACKENDS)}, "
            f"not {config.storage_backend!r}")
    if config.storage_backend == "gcs":
        _check_gcs(config)
    if config.storage_backend == "s3" and not config.bucket:
        raise ConfigError("NIXERY_STORAGE_BACKEND=s3 needs BUCKET to be set (endpoint, "
                          "region and credentials are boto3's own: AWS_ENDPOINT_URL_S3, "
                          "AWS_REGION, AWS_ACCESS_KEY_ID, ...)")
    if config.channel and not CHANNEL_RE.fullmatch(config.channel):
        raise ConfigError(f"NIXERY_CHANNEL {config.channel!r} is not a channel name")
    for name in config.channels or ():
        if not CHANNEL_RE.fullmatch(name):
            raise ConfigError(f"NIXERY_CHANNELS: {name!r} is not a channel name")
    if not ("{base}" in config.commit_check_url and "{head}" in config.commit_check_url):
        raise ConfigError("NIXERY_COMMIT_CHECK_URL must contain {base} and {head}, the "
                          "commit and the channel's head")
    if "{rev}" not in config.archive_url:
        raise ConfigError("NIXERY_ARCHIVE_URL must contain {rev}, where the commit goes")
    if config.source_refresh < 0:
        raise ConfigError(f"NIXERY_SOURCE_REFRESH must be 0 or more seconds, not {config.source_refresh}")
    if config.max_builds < 1:
        raise ConfigError(f"NIXERY_MAX_BUILDS must be at least 1, not {config.max_builds}")
    if config.build_queue_timeout < 0:
        raise ConfigError("NIXERY_BUILD_QUEUE_TIMEOUT must be 0 or more seconds, "
                          f"not {config.build_queue_timeout}")
    if config.pull_wait < 0:
        raise ConfigError(f"NIXERY_PULL_WAIT must be 0 or more seconds, not {config.pull_wait}")
    if config.failure_ttl < 0:
        raise ConfigError(f"NIXERY_FAILURE_TTL must be 0 or more seconds, not {config.failure_ttl}")
    if not config.build_lease >= 3:
        raise ConfigError(f"NIXERY_BUILD_LEASE must be at least 3 seconds, not {config.build_lease}")
    if config.blob_accel is not None:
        if config.storage_backend != "filesystem":
            raise ConfigError("NIXERY_BLOB_ACCEL needs the filesystem backend (a bucket's "
                              "blobs are redirected to signed URLs already)")
        if not (config.blob_accel.startswith("/") and config.blob_accel.endswith("/")):
            raise ConfigError(f"NIXERY_BLOB_ACCEL must be a location like /_registry_blobs/, "
                              f"not {config.blob_accel!r}")
    reports = config.front_reports
    if reports is not None and reports.startswith("/"):  # a file
        if reports.endswith("/"):
            raise ConfigError(f"NIXERY_FRONT_REPORTS {reports!r} is a folder: name the file "
                              f"nginx writes its reports to")
    elif reports is not None:  # HOST:PORT
        try:
            host_port(reports)
        except ValueError as e:
            raise ConfigError(f"NIXERY_FRONT_REPORTS {reports!r}: {e}, or the absolute path "
                              f"of a file") from None
    if config.htpasswd and not os.path.isfile(config.htpasswd):
        raise ConfigError(f"NIXERY_HTPASSWD {config.htpasswd!r} is not a file")
    if bool(config.user_header) != bool(config.user_header_peers):
        raise ConfigError("NIXERY_USER_HEADER and NIXERY_USER_HEADER_PEERS go together: "
                          "the header is believed only from those addresses")
    if config.user_header_peers:
        try:
            Proxies(config.user_header_peers, any_peer=False)
        except ValueError as e:
            raise ConfigError(f"NIXERY_USER_HEADER_PEERS: {e}") from None
    if config.client_builds is not None and (
            len(config.client_builds) != 2 or min(config.client_builds) < 1):
        raise ConfigError("NIXERY_CLIENT_BUILDS must be two positive numbers: builds per "
                          "hour, and at once (e.g. 20,2)")
    if not config.retention_days > 0:
        raise ConfigError(f"NIXERY_RETENTION must be a positive number of days, "
                          f"not {config.retention_days}")
    if config.max_layers < 2:
        raise ConfigError(f"NIXERY_MAX_LAYERS must be at least 2, not {config.max_layers}")
    if config.compressor not in compress.KINDS:
        raise ConfigError(f"NIXERY_COMPRESSOR must be one of {', '.join(compress.KINDS)}, "
                          f"not {config.compressor!r}")
    try:
        compress.Compression(config.compressor, config.compression_level)
    except ValueError as e:
        raise ConfigError(f"NIXERY_COMPRESSION_LEVEL: {e}") from None
    if config.popularity_url and _scheme(config.popularity_url) not in ("http", "https", "file"):
        raise ConfigError(f"NIX_POPULARITY_URL must be an http(s):// or file:// URL, "
                          f"not {config.popularity_url!r}")
    sources = [name for name, value in (
        ("NIXERY_CHANNEL", config.channel), ("NIXERY_PKGS_REPO", config.pkgs_repo),
        ("NIXERY_PKGS_PATH", config.pkgs_path)) if value]
    if len(sources) > 1:
        raise ConfigError(f"set only one package source, not {' and '.join(sources)}")
    if config.pkgs_path:
        if not os.path.isdir(config.pkgs_path):
            raise ConfigError(f"NIXERY_PKGS_PATH {config.pkgs_path!r} is not a directory")
        object.__setattr__(config, "pkgs_path", os.path.abspath(config.pkgs_path))
    object.__setattr__(config, "storage_path", os.path.abspath(config.storage_path))
    if config.storage_group is not None:
        if config.storage_backend != "filesystem":
            raise ConfigError("NIXERY_STORAGE_GROUP is for the filesystem backend, "
                              f"not {config.storage_backend}")
        config.storage_gid  # a group this machine knows, or ConfigError
    state = os.path.abspath(config.state_path or os.path.join(config.storage_path, ".state"))
    object.__setattr__(config, "state_path", state)
    if config.metrics_path:
        object.__setattr__(config, "metrics_path", os.path.abspath(config.metrics_path))
    _check_nix_cache(config)
    try:  # normalized: gunicorn is given it too, and refuses what this does
        proxies = Proxies(config.forwarded_allow_ips)
    except ValueError as e:
        raise ConfigError(f"FORWARDED_ALLOW_IPS: {e}") from None
    object.__setattr__(config, "forwarded_allow_ips", proxies.spec)
    if config.http_worker not in HTTP_WORKERS:
        raise ConfigError(f"NIXERY_HTTP_WORKER must be registry (the registry's own worker) or "
                          f"gthread (gunicorn's stock one), not {config.http_worker!r}")
    if config.log_format not in ("text", "json"):
        raise ConfigError(f"LOG_FORMAT must be text or json, not {config.log_format!r}")


def _check_nix_cache(config):
    from builders.nixbuild import nixcache
    if not config.nix_cache:
        if config.nix_cache_key:
            raise ConfigError("NIXERY_NIX_CACHE_KEY is set but NIXERY_NIX_CACHE is not: name "
                              "the cache the key signs for")
        return
    try:
        nixcache.check_url(config.nix_cache)
    except ValueError as e:
        raise ConfigError(f"NIXERY_NIX_CACHE {config.nix_cache!r} {e}") from None
    if not config.nix_cache_key:
        raise ConfigError("NIXERY_NIX_CACHE needs NIXERY_NIX_CACHE_KEY, the secret key file "
                          "its paths are signed with (nix-store --generate-binary-cache-key)")
    public_key(config.nix_cache_key)  # readable and a key, or ConfigError


def _check_gcs(config):
    if not config.bucket:
        raise ConfigError("NIXERY_STORAGE_BACKEND=gcs needs GCS_BUCKET (or BUCKET) to be set")
    if not config.gcs_retry_seconds > 0:
        raise ConfigError(f"GCS_RETRY_SECONDS must be a positive number of seconds, "
                          f"not {config.gcs_retry_seconds}")
    if config.google_credentials and not os.path.isfile(config.google_credentials):
        raise ConfigError(f"GOOGLE_APPLICATION_CREDENTIALS {config.google_credentials!r} "
                          "is not a file")
    if config.gcs_endpoint:
        endpoint = config.gcs_endpoint
        # The Google libraries accept a bare host:port here; so do we.
        if "://" not in endpoint:
            endpoint = "http://" + endpoint
        parsed = urllib.parse.urlsplit(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"STORAGE_EMULATOR_HOST must be an http(s) URL such as "
                              f"http://127.0.0.1:4443, not {config.gcs_endpoint!r}")
        object.__setattr__(config, "gcs_endpoint", endpoint.rstrip("/"))


def group_id(group: str | None) -> int | None:
    """The group id of NIXERY_STORAGE_GROUP (a name or a number), or None."""
    if group is None:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        pass
    if group.isdigit():
        return int(group)
    raise ConfigError(f"NIXERY_STORAGE_GROUP {group!r} is no group of this "
                      "machine (a group name or a number)")


def public_key(key_file: str | None) -> str | None:
    """The public key of NIXERY_NIX_CACHE_KEY, for substituters' trusted-public-keys."""
    if not key_file:
        return None
    from builders.nixbuild import nixcache
    try:
        with open(key_file, encoding="ascii") as f:
            return nixcache.public_key(f.read(4096))
    except OSError as e:
        raise ConfigError(f"NIXERY_NIX_CACHE_KEY {key_file!r} cannot be read: "
                          f"{e.strerror}") from None
    except (UnicodeDecodeError, ValueError) as e:
        reason = e if isinstance(e, nixcache.NotASecretKey) else "it is not a Nix secret key"
        raise ConfigError(f"NIXERY_NIX_CACHE_KEY {key_file!r}: {reason}") from None
