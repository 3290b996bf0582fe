"""The registry's configuration: the only module that reads the environment.

Variable names are Nixery's, so existing deployments keep working.  A bad
value stops the server at start with a message naming the variable.
"""
from __future__ import annotations

import dataclasses
import os
import urllib.parse
from dataclasses import dataclass

from builders import compress

STORAGE_BACKENDS = ("filesystem", "gcs")
DEFAULT_CHANNEL = "nixos-unstable"


class ConfigError(Exception):
    """A configuration value is missing or wrong; the message names the variable."""


@dataclass(frozen=True)
class Config:
    port: int = 8080
    # 0.0.0.0 like Nixery, for containers and load balancers
    listen_address: str = "0.0.0.0"
    nix_timeout: float = 60.0
    channel: str | None = None
    pkgs_repo: str | None = None
    pkgs_path: str | None = None
    storage_backend: str = "filesystem"
    storage_path: str = "./var/storage"
    gcs_bucket: str | None = None
    google_credentials: str | None = None
    popularity_url: str | None = None
    # Layers of an image, the symlink layer included.
    max_layers: int = 100
    # How layers are gzipped; the level defaults per compressor.
    compressor: str = compress.DEFAULT
    compression_level: int | None = None
    log_level: str = "INFO"

    def __post_init__(self):
        if not 0 < self.port < 65536:
            raise ConfigError(f"PORT must be between 1 and 65535, not {self.port}")
        if not self.nix_timeout > 0:
            raise ConfigError(f"NIX_TIMEOUT must be a positive number of seconds, not {self.nix_timeout}")
        if self.storage_backend not in STORAGE_BACKENDS:
            raise ConfigError(
                f"NIXERY_STORAGE_BACKEND must be one of {', '.join(STORAGE_BACKENDS)}, "
                f"not {self.storage_backend!r}")
        if self.storage_backend == "gcs" and not self.gcs_bucket:
            raise ConfigError("NIXERY_STORAGE_BACKEND=gcs needs GCS_BUCKET (or BUCKET) to be set")
        if self.max_layers < 2:
            raise ConfigError(f"NIXERY_MAX_LAYERS must be at least 2, not {self.max_layers}")
        if self.compressor not in compress.KINDS:
            raise ConfigError(f"NIXERY_COMPRESSOR must be one of {', '.join(compress.KINDS)}, "
                              f"not {self.compressor!r}")
        try:
            compress.Compression(self.compressor, self.compression_level)
        except ValueError as e:
            raise ConfigError(f"NIXERY_COMPRESSION_LEVEL: {e}") from None
        if self.popularity_url and urllib.parse.urlsplit(self.popularity_url).scheme not in (
                "http", "https", "file"):
            raise ConfigError(f"NIX_POPULARITY_URL must be an http(s):// or file:// URL, "
                              f"not {self.popularity_url!r}")
        sources = [name for name, value in (
            ("NIXERY_CHANNEL", self.channel), ("NIXERY_PKGS_REPO", self.pkgs_repo),
            ("NIXERY_PKGS_PATH", self.pkgs_path)) if value]
        if len(sources) > 1:
            raise ConfigError(f"set only one package source, not {' and '.join(sources)}")
        if self.pkgs_path:
            if not os.path.isdir(self.pkgs_path):
                raise ConfigError(f"NIXERY_PKGS_PATH {self.pkgs_path!r} is not a directory")
            object.__setattr__(self, "pkgs_path", os.path.abspath(self.pkgs_path))
        object.__setattr__(self, "storage_path", os.path.abspath(self.storage_path))

    @property
    def effective_channel(self) -> str | None:
        """The channel in use: NIXERY_CHANNEL, or the default when no source is set."""
        if self.channel:
            return self.channel
        if not (self.pkgs_repo or self.pkgs_path):
            return DEFAULT_CHANNEL
        return None

    @property
    def compression(self) -> compress.Compression:
        return compress.Compression(self.compressor, self.compression_level)

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ=None) -> "Config":
        env = os.environ if environ is None else environ

        def get(name):
            value = env.get(name, "").strip()
            return value or None

        def number(name, kind, default):
            raw = get(name)
            if raw is None:
                return default
            try:
                return kind(raw)
            except ValueError:
                raise ConfigError(f"{name} must be a {kind.__name__}, not {raw!r}") from None

        kwargs = dict(
            port=number("PORT", int, cls.port),
            listen_address=get("LISTEN_ADDRESS") or cls.listen_address,
            nix_timeout=number("NIX_TIMEOUT", float, cls.nix_timeout),
            channel=get("NIXERY_CHANNEL"),
            pkgs_repo=get("NIXERY_PKGS_REPO"),
            pkgs_path=get("NIXERY_PKGS_PATH"),
            storage_backend=get("NIXERY_STORAGE_BACKEND") or cls.storage_backend,
            storage_path=get("STORAGE_PATH") or cls.storage_path,
            gcs_bucket=get("GCS_BUCKET") or get("BUCKET"),
            google_credentials=get("GOOGLE_APPLICATION_CREDENTIALS"),
            popularity_url=get("NIX_POPULARITY_URL"),
            max_layers=number("NIXERY_MAX_LAYERS", int, cls.max_layers),
            compressor=get("NIXERY_COMPRESSOR") or cls.compressor,
            compression_level=number("NIXERY_COMPRESSION_LEVEL", int, None),
            log_level=(get("LOG_LEVEL") or cls.log_level).upper(),
        )
        return cls(**kwargs)
