"""The registry's configuration: the only module that reads the environment.

gunicorn's settings import it before workers start and before they set
prometheus_client's multiprocess folder: nothing it imports at the top may
import prometheus_client (which picks its kind of values when imported).

Variable names are Nixery's, so existing deployments keep working.  A bad
value stops the server at start with a message naming the variable: how
each is parsed and shown is app/settings.py's, how a configuration is
checked app/validation.py's.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from builders.image import platforms as platforms_
from builders.layers import compress

from . import settings, validation
from .settings import RETIRED, VARIABLES, ConfigError

DEFAULT_CHANNEL = "nixos-unstable"


def script_name(environ=None) -> str:
    """The path prefix gunicorn strips from every request's path (its own
    SCRIPT_NAME variable, read by gunicorn itself, not a registry setting):
    app/http/http1.py leaves requests to gunicorn when one is set."""
    env = os.environ if environ is None else environ
    return env.get("SCRIPT_NAME", "")


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
    # Where the caching nginx in front reports what it answered from its
    # cache (HOST:PORT, UDP), for the metrics to count it (app/front.py).
    front_reports: str | None = None
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
        validation.check(self)

    @property
    def authenticates(self) -> bool:
        return bool(self.htpasswd or self.user_header)

    @property
    def storage_gid(self) -> int | None:
        """The group id of NIXERY_STORAGE_GROUP (a name or a number), or None."""
        return validation.group_id(self.storage_group)

    @property
    def nix_cache_public_key(self) -> str | None:
        """The public key of NIXERY_NIX_CACHE_KEY, for substituters' trusted-public-keys."""
        return validation.public_key(self.nix_cache_key)

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

    @property
    def gc_roots_path(self) -> str:
        """Where builds keep Nix's garbage collector roots of what they built."""
        return os.path.join(self.state_path, "gcroots")

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
            return settings.number(name, get(name), kind, default)

        def flag(name):
            return settings.flag(name, get(name))

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
            platforms=settings.platform_list("NIXERY_PLATFORMS", get("NIXERY_PLATFORMS"),
                                             cls.platforms),
            retention_days=number("NIXERY_RETENTION", float, cls.retention_days),
            blob_accel=get("NIXERY_BLOB_ACCEL"),
            front_reports=get("NIXERY_FRONT_REPORTS"),
            htpasswd=get("NIXERY_HTPASSWD"),
            user_header=get("NIXERY_USER_HEADER"),
            user_header_peers=get("NIXERY_USER_HEADER_PEERS"),
            tls_in_front=flag("NIXERY_TLS_IN_FRONT"),
            client_builds=settings.client_builds("NIXERY_CLIENT_BUILDS",
                                                 get("NIXERY_CLIENT_BUILDS")),
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
            shown = settings.shown(getattr(self, field))
            if field == "nix_cache_key" and shown:
                shown += f"  (public key {self.nix_cache_public_key})"
            if field == "nix_config":
                shown = settings.nix_settings(self.nix_config or "")
            rows.append((chosen, shown, bool(env.get(chosen, "").strip())))
        return rows
