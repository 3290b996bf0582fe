"""The registry's configuration: the only module that reads the environment.

gunicorn's settings import it before workers start and before they set
prometheus_client's multiprocess folder: nothing it imports at the top may
import prometheus_client (which picks its kind of values when imported).

Variable names are Nixery's, so existing deployments keep working.  A bad
value stops the server at start with a message naming the variable.
"""
from __future__ import annotations

import grp
import os
import re
import urllib.parse
from dataclasses import dataclass

import click

from builders.layers import compress
from builders.image import platforms as platforms_

from .proxy import Proxies

STORAGE_BACKENDS = ("filesystem", "gcs", "s3")
# NIXERY_HTTP_WORKER: the gunicorn worker class each name runs
HTTP_WORKERS = {"registry": "app.http.worker.Worker", "gthread": "gthread"}
DEFAULT_CHANNEL = "nixos-unstable"
CHANNEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def script_name(environ=None) -> str:
    """The path prefix gunicorn strips from every request's path (its own
    SCRIPT_NAME variable, read by gunicorn itself, not a registry setting):
    app/http/http1.py leaves requests to gunicorn when one is set."""
    env = os.environ if environ is None else environ
    return env.get("SCRIPT_NAME", "")


def _scheme(url: str) -> str | None:
    try:
        return urllib.parse.urlsplit(url).scheme
    except ValueError:  # e.g. an unclosed [ of an IPv6 address
        return None


class ConfigError(click.ClickException):
    """A configuration value is missing or wrong; the message names the variable.

    A click exception, so that every command (`nix-image-registry ...` and
    `flask --app app ...` alike) says it in one line instead of a traceback.
    """

    def format_message(self) -> str:
        return f"configuration error: {self.message}"

    def show(self, file=None) -> None:
        click.echo(self.format_message(), err=True)


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
    # Whether the operator chose the storage (STORAGE_PATH, or a bucket):
    # `gc` deletes nothing from the default ./var/storage of some folder.
    storage_chosen: bool = True
    # The group that may read the filesystem backend's files (a web server
    # in front sending blobs): files 0640 and folders 2750 of that group
    # instead of 0644 and 0755 readable by anyone.
    storage_group: str | None = None
    # The bucket of the gcs or s3 backend.
    bucket: str | None = None
    google_credentials: str | None = None
    # Another GCS endpoint (an emulator such as fake-gcs-server) instead of
    # Google's; signed blob URLs then point at it too.
    gcs_endpoint: str | None = None
    # How long one storage operation keeps retrying transient GCS failures
    # before the request fails with 503.
    gcs_retry_seconds: float = 30.0
    popularity_url: str | None = None
    # How long a moving source (channel, branch, local folder) keeps the
    # revision it resolved to before it is asked again.
    source_refresh: float = 300.0
    # Where channels publish the commit they point at, and where nixpkgs
    # at a commit is fetched from.
    channel_url: str = "https://channels.nixos.org"
    archive_url: str = "https://github.com/NixOS/nixpkgs/archive/{rev}.tar.gz"
    # Builds at once on this machine; past that a request waits at most
    # build_queue_timeout seconds, then is told to retry (429).
    max_builds: int = os.cpu_count() or 1
    build_queue_timeout: float = 30.0
    # How long a pull waits for the job building its image before it is
    # told to retry (429, Retry-After) with what the job is doing.
    pull_wait: float = 25.0
    # How long a failure that will happen again (unknown or refused
    # packages, a build error) answers pulls of its image without Nix.
    failure_ttl: float = 3600.0
    # How long an instance's claim on a build lasts unless it renews it:
    # how soon another instance takes over the build of one that died.
    build_lease: float = 60.0
    # Tags that name no revision answer 404 instead of meaning `latest`.
    strict_tags: bool = False
    # Channels a tag may name (None: any nixos-* or nixpkgs-* channel), and
    # how a commit tag is found in the history of one of them.
    channels: tuple[str, ...] | None = None
    commit_check_url: str = "https://api.github.com/repos/NixOS/nixpkgs/compare/{base}...{head}"
    any_commit: bool = False
    # The platforms every image name is built for, in order: with more than
    # one, a pull by tag that accepts an index gets one; the first is what
    # other clients get.
    platforms: tuple[platforms_.Platform, ...] = (platforms_.HOST,)
    # The internal location of the web server in front (deploy/nginx.conf)
    # that serves the storage folder: blob GETs then answer with an
    # X-Accel-Redirect there, and the web server sends the bytes.
    blob_accel: str | None = None
    # Who may pull: an htpasswd file of bcrypt entries; and/or the header an
    # authenticating proxy names the user in, believed only from its
    # addresses (CIDR ranges).  tls_in_front says TLS ends in front of the
    # registry (else a warning at start: Basic credentials travel in clear).
    htpasswd: str | None = None
    user_header: str | None = None
    user_header_peers: str | None = None
    tls_in_front: bool = False
    # New builds one client may start per hour, and at once (None: no limit).
    client_builds: tuple[int, int] | None = None
    # How long an image nobody pulls is kept, in days, when garbage is
    # collected (`flask --app app gc`).
    retention_days: float = 30.0
    # This machine's own state: build locks, build history, metrics files.
    state_path: str | None = None
    # prometheus_client's multiprocess folder (its own variable name); set
    # when several worker processes serve, as under gunicorn
    metrics_path: str | None = None
    log_format: str = "text"
    # Peers whose X-Forwarded-* headers are believed (gunicorn's setting).
    forwarded_allow_ips: str = "127.0.0.1"
    # The gunicorn worker: the registry's own (app/http/worker.py, which reads
    # plain requests itself) or gunicorn's stock gthread worker.
    http_worker: str = "registry"
    # Layers of an image, the symlink layer included.
    max_layers: int = 100
    # How layers are gzipped; the level defaults per compressor.
    compressor: str = compress.DEFAULT
    compression_level: int | None = None
    log_level: str = "INFO"
    # The Nix binary cache every built closure is copied to, signed with
    # the secret key in nix_cache_key (a file of
    # `nix-store --generate-binary-cache-key`).
    nix_cache: str | None = None
    nix_cache_key: str | None = None
    # Nix's own settings (NIX_CONFIG; nix.conf in NIX_CONF_DIR), as Nix
    # reads them: a remembered failure holds for these only.
    nix_config: str | None = None
    nix_conf_dir: str = "/etc/nix"

    def __post_init__(self):
        if not 0 < self.port < 65536:
            raise ConfigError(f"PORT must be between 1 and 65535, not {self.port}")
        if not self.nix_timeout > 0:
            raise ConfigError(f"NIX_TIMEOUT must be a positive number of seconds, not {self.nix_timeout}")
        if self.storage_backend not in STORAGE_BACKENDS:
            raise ConfigError(
                f"NIXERY_STORAGE_BACKEND must be one of {', '.join(STORAGE_BACKENDS)}, "
                f"not {self.storage_backend!r}")
        if self.storage_backend == "gcs":
            self._check_gcs()
        if self.storage_backend == "s3" and not self.bucket:
            raise ConfigError("NIXERY_STORAGE_BACKEND=s3 needs BUCKET to be set (endpoint, "
                              "region and credentials are boto3's own: AWS_ENDPOINT_URL_S3, "
                              "AWS_REGION, AWS_ACCESS_KEY_ID, ...)")
        if self.channel and not CHANNEL_RE.fullmatch(self.channel):
            raise ConfigError(f"NIXERY_CHANNEL {self.channel!r} is not a channel name")
        for name in self.channels or ():
            if not CHANNEL_RE.fullmatch(name):
                raise ConfigError(f"NIXERY_CHANNELS: {name!r} is not a channel name")
        if not ("{base}" in self.commit_check_url and "{head}" in self.commit_check_url):
            raise ConfigError("NIXERY_COMMIT_CHECK_URL must contain {base} and {head}, the "
                              "commit and the channel's head")
        if "{rev}" not in self.archive_url:
            raise ConfigError("NIXERY_ARCHIVE_URL must contain {rev}, where the commit goes")
        if self.source_refresh < 0:
            raise ConfigError(f"NIXERY_SOURCE_REFRESH must be 0 or more seconds, not {self.source_refresh}")
        if self.max_builds < 1:
            raise ConfigError(f"NIXERY_MAX_BUILDS must be at least 1, not {self.max_builds}")
        if self.build_queue_timeout < 0:
            raise ConfigError("NIXERY_BUILD_QUEUE_TIMEOUT must be 0 or more seconds, "
                              f"not {self.build_queue_timeout}")
        if self.pull_wait < 0:
            raise ConfigError(f"NIXERY_PULL_WAIT must be 0 or more seconds, not {self.pull_wait}")
        if self.failure_ttl < 0:
            raise ConfigError(f"NIXERY_FAILURE_TTL must be 0 or more seconds, not {self.failure_ttl}")
        if not self.build_lease >= 3:
            raise ConfigError(f"NIXERY_BUILD_LEASE must be at least 3 seconds, not {self.build_lease}")
        if self.blob_accel is not None:
            if self.storage_backend != "filesystem":
                raise ConfigError("NIXERY_BLOB_ACCEL needs the filesystem backend (a bucket's "
                                  "blobs are redirected to signed URLs already)")
            if not (self.blob_accel.startswith("/") and self.blob_accel.endswith("/")):
                raise ConfigError(f"NIXERY_BLOB_ACCEL must be a location like /_registry_blobs/, "
                                  f"not {self.blob_accel!r}")
        if self.htpasswd and not os.path.isfile(self.htpasswd):
            raise ConfigError(f"NIXERY_HTPASSWD {self.htpasswd!r} is not a file")
        if bool(self.user_header) != bool(self.user_header_peers):
            raise ConfigError("NIXERY_USER_HEADER and NIXERY_USER_HEADER_PEERS go together: "
                              "the header is believed only from those addresses")
        if self.user_header_peers:
            try:
                Proxies(self.user_header_peers, any_peer=False)
            except ValueError as e:
                raise ConfigError(f"NIXERY_USER_HEADER_PEERS: {e}") from None
        if self.client_builds is not None and (
                len(self.client_builds) != 2 or min(self.client_builds) < 1):
            raise ConfigError("NIXERY_CLIENT_BUILDS must be two positive numbers: builds per "
                              "hour, and at once (e.g. 20,2)")
        if not self.retention_days > 0:
            raise ConfigError(f"NIXERY_RETENTION must be a positive number of days, "
                              f"not {self.retention_days}")
        if self.max_layers < 2:
            raise ConfigError(f"NIXERY_MAX_LAYERS must be at least 2, not {self.max_layers}")
        if self.compressor not in compress.KINDS:
            raise ConfigError(f"NIXERY_COMPRESSOR must be one of {', '.join(compress.KINDS)}, "
                              f"not {self.compressor!r}")
        try:
            compress.Compression(self.compressor, self.compression_level)
        except ValueError as e:
            raise ConfigError(f"NIXERY_COMPRESSION_LEVEL: {e}") from None
        if self.popularity_url and _scheme(self.popularity_url) not in ("http", "https", "file"):
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
        if self.storage_group is not None:
            if self.storage_backend != "filesystem":
                raise ConfigError("NIXERY_STORAGE_GROUP is for the filesystem backend, "
                                  f"not {self.storage_backend}")
            self.storage_gid  # a group this machine knows, or ConfigError
        state = os.path.abspath(self.state_path or os.path.join(self.storage_path, ".state"))
        object.__setattr__(self, "state_path", state)
        if self.metrics_path:
            object.__setattr__(self, "metrics_path", os.path.abspath(self.metrics_path))
        self._check_nix_cache()
        try:  # normalized: gunicorn is given it too, and refuses what this does
            proxies = Proxies(self.forwarded_allow_ips)
        except ValueError as e:
            raise ConfigError(f"FORWARDED_ALLOW_IPS: {e}") from None
        object.__setattr__(self, "forwarded_allow_ips", proxies.spec)
        if self.http_worker not in HTTP_WORKERS:
            raise ConfigError(f"NIXERY_HTTP_WORKER must be registry (the registry's own worker) or "
                              f"gthread (gunicorn's stock one), not {self.http_worker!r}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"LOG_FORMAT must be text or json, not {self.log_format!r}")

    @property
    def authenticates(self) -> bool:
        return bool(self.htpasswd or self.user_header)

    @property
    def storage_gid(self) -> int | None:
        """The group id of NIXERY_STORAGE_GROUP (a name or a number), or None."""
        if self.storage_group is None:
            return None
        try:
            return grp.getgrnam(self.storage_group).gr_gid
        except (KeyError, ValueError):  # ValueError: a NUL in the name
            pass
        if self.storage_group.isdigit():
            return int(self.storage_group)
        raise ConfigError(f"NIXERY_STORAGE_GROUP {self.storage_group!r} is no group of this "
                          "machine (a group name or a number)")

    @property
    def retention(self) -> float:
        return self.retention_days * 24 * 3600

    @property
    def lock_path(self) -> str:
        return os.path.join(self.state_path, "locks")

    @property
    def default_metrics_path(self) -> str:
        return os.path.join(self.state_path, "metrics")

    @property
    def history_path(self) -> str:
        return os.path.join(self.state_path, "history")

    def _check_nix_cache(self):
        from builders.nixbuild import nixcache
        if not self.nix_cache:
            if self.nix_cache_key:
                raise ConfigError("NIXERY_NIX_CACHE_KEY is set but NIXERY_NIX_CACHE is not: name "
                                  "the cache the key signs for")
            return
        try:
            nixcache.check_url(self.nix_cache)
        except ValueError as e:
            raise ConfigError(f"NIXERY_NIX_CACHE {self.nix_cache!r} {e}") from None
        if not self.nix_cache_key:
            raise ConfigError("NIXERY_NIX_CACHE needs NIXERY_NIX_CACHE_KEY, the secret key file "
                              "its paths are signed with (nix-store --generate-binary-cache-key)")
        self.nix_cache_public_key  # readable and a key, or ConfigError

    @property
    def nix_cache_public_key(self) -> str | None:
        """The public key of NIXERY_NIX_CACHE_KEY, for substituters' trusted-public-keys."""
        if not self.nix_cache_key:
            return None
        from builders.nixbuild import nixcache
        try:
            with open(self.nix_cache_key, encoding="ascii") as f:
                return nixcache.public_key(f.read(4096))
        except OSError as e:
            raise ConfigError(f"NIXERY_NIX_CACHE_KEY {self.nix_cache_key!r} cannot be read: "
                              f"{e.strerror}") from None
        except (UnicodeDecodeError, ValueError) as e:
            reason = e if isinstance(e, nixcache.NotASecretKey) else "it is not a Nix secret key"
            raise ConfigError(f"NIXERY_NIX_CACHE_KEY {self.nix_cache_key!r}: {reason}") from None

    @property
    def gc_roots_path(self) -> str:
        """Where builds keep Nix's garbage collector roots of what they built."""
        return os.path.join(self.state_path, "gcroots")

    def _check_gcs(self):
        if not self.bucket:
            raise ConfigError("NIXERY_STORAGE_BACKEND=gcs needs GCS_BUCKET (or BUCKET) to be set")
        if not self.gcs_retry_seconds > 0:
            raise ConfigError(f"GCS_RETRY_SECONDS must be a positive number of seconds, "
                              f"not {self.gcs_retry_seconds}")
        if self.google_credentials and not os.path.isfile(self.google_credentials):
            raise ConfigError(f"GOOGLE_APPLICATION_CREDENTIALS {self.google_credentials!r} "
                              "is not a file")
        if self.gcs_endpoint:
            endpoint = self.gcs_endpoint
            # The Google libraries accept a bare host:port here; so do we.
            if "://" not in endpoint:
                endpoint = "http://" + endpoint
            parsed = urllib.parse.urlsplit(endpoint)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise ConfigError(f"STORAGE_EMULATOR_HOST must be an http(s) URL such as "
                                  f"http://127.0.0.1:4443, not {self.gcs_endpoint!r}")
            object.__setattr__(self, "gcs_endpoint", endpoint.rstrip("/"))

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
                what = "a whole number" if kind is int else "a number"
                raise ConfigError(f"{name} must be {what}, not {raw!r}") from None

        def platform_list(name):
            raw = get(name)
            if raw is None:
                return cls.platforms
            try:
                return platforms_.parse(raw)
            except ValueError as e:
                raise ConfigError(f"{name}: {e}") from None

        def client_builds(name):
            raw = get(name)
            if raw is None:
                return None
            try:
                return tuple(int(p) for p in raw.split(","))
            except ValueError:
                raise ConfigError(f"{name} must be two whole numbers, builds per hour and at "
                                  f"once (e.g. 20,2), not {raw!r}") from None

        def flag(name):
            raw = (get(name) or "0").lower()
            if raw not in ("0", "1", "true", "false", "yes", "no"):
                raise ConfigError(f"{name} must be 1 or 0, not {raw!r}")
            return raw in ("1", "true", "yes")

        for name, instead in RETIRED.items():
            if get(name) is not None:
                raise ConfigError(f"{name} is no longer read: {instead}")
        kwargs = dict(
            port=number("PORT", int, cls.port),
            listen_address=get("LISTEN_ADDRESS") or cls.listen_address,
            nix_timeout=number("NIX_TIMEOUT", float, cls.nix_timeout),
            channel=get("NIXERY_CHANNEL"),
            pkgs_repo=get("NIXERY_PKGS_REPO"),
            pkgs_path=get("NIXERY_PKGS_PATH"),
            storage_backend=get("NIXERY_STORAGE_BACKEND") or cls.storage_backend,
            storage_path=get("STORAGE_PATH") or cls.storage_path,
            storage_chosen=bool(get("STORAGE_PATH")) or (
                get("NIXERY_STORAGE_BACKEND") or cls.storage_backend) != "filesystem",
            storage_group=get("NIXERY_STORAGE_GROUP"),
            # GCS_BUCKET is the GCS backend's name for it only
            bucket=(get("GCS_BUCKET") if (get("NIXERY_STORAGE_BACKEND") or "") != "s3" else None)
            or get("BUCKET"),
            google_credentials=get("GOOGLE_APPLICATION_CREDENTIALS"),
            gcs_endpoint=get("STORAGE_EMULATOR_HOST"),
            gcs_retry_seconds=number("GCS_RETRY_SECONDS", float, cls.gcs_retry_seconds),
            popularity_url=get("NIX_POPULARITY_URL"),
            max_layers=number("NIXERY_MAX_LAYERS", int, cls.max_layers),
            max_builds=number("NIXERY_MAX_BUILDS", int, cls.max_builds),
            build_queue_timeout=number("NIXERY_BUILD_QUEUE_TIMEOUT", float,
                                       cls.build_queue_timeout),
            pull_wait=number("NIXERY_PULL_WAIT", float, cls.pull_wait),
            failure_ttl=number("NIXERY_FAILURE_TTL", float, cls.failure_ttl),
            build_lease=number("NIXERY_BUILD_LEASE", float, cls.build_lease),
            strict_tags=flag("NIXERY_STRICT_TAGS"),
            channels=tuple(c.strip() for c in get("NIXERY_CHANNELS").split(",") if c.strip())
            if get("NIXERY_CHANNELS") else None,
            commit_check_url=get("NIXERY_COMMIT_CHECK_URL") or cls.commit_check_url,
            any_commit=flag("NIXERY_ANY_COMMIT"),
            platforms=platform_list("NIXERY_PLATFORMS"),
            retention_days=number("NIXERY_RETENTION", float, cls.retention_days),
            blob_accel=get("NIXERY_BLOB_ACCEL"),
            htpasswd=get("NIXERY_HTPASSWD"),
            user_header=get("NIXERY_USER_HEADER"),
            user_header_peers=get("NIXERY_USER_HEADER_PEERS"),
            tls_in_front=flag("NIXERY_TLS_IN_FRONT"),
            client_builds=client_builds("NIXERY_CLIENT_BUILDS"),
            state_path=get("NIXERY_STATE_PATH"),
            metrics_path=get("PROMETHEUS_MULTIPROC_DIR"),
            log_format=(get("LOG_FORMAT") or cls.log_format).lower(),
            forwarded_allow_ips=get("FORWARDED_ALLOW_IPS") or cls.forwarded_allow_ips,
            http_worker=get("NIXERY_HTTP_WORKER") or cls.http_worker,
            source_refresh=number("NIXERY_SOURCE_REFRESH", float, cls.source_refresh),
            channel_url=get("NIXERY_CHANNEL_URL") or cls.channel_url,
            archive_url=get("NIXERY_ARCHIVE_URL") or cls.archive_url,
            compressor=get("NIXERY_COMPRESSOR") or cls.compressor,
            compression_level=number("NIXERY_COMPRESSION_LEVEL", int, None),
            log_level=(get("LOG_LEVEL") or cls.log_level).upper(),
            nix_cache=get("NIXERY_NIX_CACHE"),
            nix_cache_key=get("NIXERY_NIX_CACHE_KEY"),
            nix_config=get("NIX_CONFIG"),
            nix_conf_dir=get("NIX_CONF_DIR") or cls.nix_conf_dir,
        )
        return cls(**kwargs)

    def describe(self, environ=None) -> list[tuple[str, str, bool]]:
        """Each setting as `nix-image-registry config` shows it: the variable,
        the value in effect (secrets in URLs masked), and whether the
        environment set it (else it is the default)."""
        env = os.environ if environ is None else environ
        rows = []
        for field, names in VARIABLES.items():
            if field == "bucket" and self.storage_backend == "s3":
                names = ("BUCKET",)
            chosen = next((n for n in names if env.get(n, "").strip()), names[0])
            shown = _shown(getattr(self, field))
            if field == "nix_cache_key" and shown:
                shown += f"  (public key {self.nix_cache_public_key})"
            if field == "nix_config":
                shown = _nix_settings(self.nix_config or "")
            rows.append((chosen, shown, bool(env.get(chosen, "").strip())))
        return rows


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


def _nix_settings(text: str) -> str:
    """NIX_CONFIG on one line (`\\n` between settings), access tokens masked."""
    lines = []
    for line in text.splitlines():
        name, sep, _ = line.partition("=")
        if sep and name.strip() in ("access-tokens", "extra-access-tokens"):
            line = f"{name.strip()} = ***"
        if line.strip():
            lines.append(line.strip())
    return "\\n".join(lines)


def _shown(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return ",".join(getattr(v, "name", None) or str(v) for v in value)
    return mask(str(value))
