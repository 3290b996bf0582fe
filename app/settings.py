"""The registry's settings apart from reading them (app/config.py reads the
environment): which variable sets each, how a variable's text is parsed,
and how each value is shown; a wrong one is a ConfigError that names its
variable.  The checks of a whole configuration: app/validation.py.
"""
from __future__ import annotations

import re
import urllib.parse

import click

from builders.image import platforms as platforms_

STORAGE_BACKENDS = ("filesystem", "gcs", "s3")
# NIXERY_HTTP_WORKER: the gunicorn worker class each name runs
HTTP_WORKERS = {"registry": "app.http.worker.Worker", "gthread": "gthread"}


class ConfigError(click.ClickException):
    """A configuration value is missing or wrong; the message names the variable.

    A click exception, so that every command (`nix-image-registry ...` and
    `flask --app app ...` alike) says it in one line instead of a traceback.
    """

    def format_message(self) -> str:
        return f"configuration error: {self.message}"

    def show(self, file=None) -> None:
        click.echo(self.format_message(), err=True)


def number(name, raw, kind, default):
    """The number `raw` (NAME's value, or None when unset) of `kind`."""
    if raw is None:
        return default
    try:
        return kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{name} must be {what}, not {raw!r}") from None


def platform_list(name, raw, default):
    """The platforms `raw` names (NIXERY_PLATFORMS)."""
    if raw is None:
        return default
    try:
        return platforms_.parse(raw)
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from None


def client_builds(name, raw):
    """Builds per hour and at once (NIXERY_CLIENT_BUILDS), or None."""
    if raw is None:
        return None
    try:
        return tuple(int(p) for p in raw.split(","))
    except ValueError:
        raise ConfigError(f"{name} must be two whole numbers, builds per hour and at "
                          f"once (e.g. 20,2), not {raw!r}") from None


def host_port(raw: str) -> tuple[str, int]:
    """`HOST:PORT` (an IPv6 address in brackets) as (host, port); ValueError
    says what is wrong."""
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8514")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("write an IPv6 address in brackets, e.g. [::1]:8514")
    return host, int(port)


def flag(name, raw):
    """True or False for `raw` (1, true, yes or 0, false, no; unset is 0)."""
    raw = (raw or "0").lower()
    if raw not in ("0", "1", "true", "false", "yes", "no"):
        raise ConfigError(f"{name} must be 1 or 0, not {raw!r}")
    return raw in ("1", "true", "yes")


# Each setting's variable: the field of Config it sets, in the order
# `config` lists them; where two names are accepted, the first is the one
# to use.  tests/app/test_config.py holds this to what from_env() reads.
VARIABLES = {
    "port": ("PORT",),
    "listen_address": ("LISTEN_ADDRESS",),
    "nix_timeout": ("NIX_TIMEOUT",),
    "channel": ("NIXERY_CHANNEL",),
    "pkgs_repo": ("NIXERY_PKGS_REPO",),
    "pkgs_path": ("NIXERY_PKGS_PATH",),
    "channels": ("NIXERY_CHANNELS",),
    "any_commit": ("NIXERY_ANY_COMMIT",),
    "commit_check_url": ("NIXERY_COMMIT_CHECK_URL",),
    "channel_url": ("NIXERY_CHANNEL_URL",),
    "archive_url": ("NIXERY_ARCHIVE_URL",),
    "source_refresh": ("NIXERY_SOURCE_REFRESH",),
    "strict_tags": ("NIXERY_STRICT_TAGS",),
    "platforms": ("NIXERY_PLATFORMS",),
    "storage_backend": ("NIXERY_STORAGE_BACKEND",),
    "storage_path": ("STORAGE_PATH",),
    "storage_group": ("NIXERY_STORAGE_GROUP",),
    "bucket": ("GCS_BUCKET", "BUCKET"),
    "google_credentials": ("GOOGLE_APPLICATION_CREDENTIALS",),
    "gcs_endpoint": ("STORAGE_EMULATOR_HOST",),
    "gcs_retry_seconds": ("GCS_RETRY_SECONDS",),
    "state_path": ("NIXERY_STATE_PATH",),
    "metrics_path": ("PROMETHEUS_MULTIPROC_DIR",),
    "popularity_url": ("NIX_POPULARITY_URL",),
    "max_layers": ("NIXERY_MAX_LAYERS",),
    "compressor": ("NIXERY_COMPRESSOR",),
    "compression_level": ("NIXERY_COMPRESSION_LEVEL",),
    "max_builds": ("NIXERY_MAX_BUILDS",),
    "build_queue_timeout": ("NIXERY_BUILD_QUEUE_TIMEOUT",),
    "pull_wait": ("NIXERY_PULL_WAIT",),
    "build_lease": ("NIXERY_BUILD_LEASE",),
    "failure_ttl": ("NIXERY_FAILURE_TTL",),
    "retention_days": ("NIXERY_RETENTION",),
    "blob_accel": ("NIXERY_BLOB_ACCEL",),
    "front_reports": ("NIXERY_FRONT_REPORTS",),
    "htpasswd": ("NIXERY_HTPASSWD",),
    "user_header": ("NIXERY_USER_HEADER",),
    "user_header_peers": ("NIXERY_USER_HEADER_PEERS",),
    "tls_in_front": ("NIXERY_TLS_IN_FRONT",),
    "client_builds": ("NIXERY_CLIENT_BUILDS",),
    "forwarded_allow_ips": ("FORWARDED_ALLOW_IPS",),
    "http_worker": ("NIXERY_HTTP_WORKER",),
    "log_format": ("LOG_FORMAT",),
    "log_level": ("LOG_LEVEL",),
    "nix_cache": ("NIXERY_NIX_CACHE",),
    "nix_cache_key": ("NIXERY_NIX_CACHE_KEY",),
    "nix_config": ("NIX_CONFIG",),
    "nix_conf_dir": ("NIX_CONF_DIR",),
}

# Variables no longer read, refused at start with what to set instead.
RETIRED = {
    "NIXERY_PROXY_HOPS": "list every proxy in front in FORWARDED_ALLOW_IPS (addresses and CIDR "
                         "ranges); the client is the rightmost X-Forwarded-For address not "
                         "among them",
}

# Query parameters whose values are secrets, wherever a URL carries them.
_SECRET_PARAMS = re.compile(r"token|secret|password|passwd|key|sig|signature|credential",
                            re.IGNORECASE)


def mask(value: str) -> str:
    """`value` with the secrets a URL may carry (a password in it, a token
    in its query) replaced by `***`, for showing settings to people."""
    if "://" not in value:
        return value
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 (a malformed port is left as it is)
    except ValueError:
        return value
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username}:***@{netloc.rpartition('@')[2]}"
    elif parts.username is not None and parts.scheme in ("http", "https"):
        # https://TOKEN@github.com/...: a user name alone is a token there
        netloc = f"***@{netloc.rpartition('@')[2]}"
    query = "&".join(
        f"{k}=***" if _SECRET_PARAMS.search(k) else (f"{k}={v}" if v or "=" in pair else k)
        for pair in parts.query.split("&") if pair
        for k, _, v in [pair.partition("=")])
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def nix_settings(text: str) -> str:
    """NIX_CONFIG on one line (`\\n` between settings), access tokens masked."""
    lines = []
    for line in text.splitlines():
        name, sep, _ = line.partition("=")
        if sep and name.strip() in ("access-tokens", "extra-access-tokens"):
            line = f"{name.strip()} = ***"
        if line.strip():
            lines.append(line.strip())
    return "\\n".join(lines)


def shown(value) -> str:
    """A setting's value as `nix-image-registry config` shows it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return ",".join(getattr(v, "name", None) or str(v) for v in value)
    return mask(str(value))
