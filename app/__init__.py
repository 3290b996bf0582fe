"""The registry's application: every object that holds state is made here.

Only the configuration is imported up front: gunicorn.conf.py reads it
before workers start, and must be able to set up the metrics folder
before anything imports prometheus_client.
"""
from __future__ import annotations

from .config import Config


def _history(path):
    """The build history, or None: pulls must work without the pages' history."""
    import logging
    import sqlite3

    from builders.jobs.history import BuildHistory
    try:
        return BuildHistory(path)
    except (sqlite3.Error, OSError) as e:
        logging.getLogger(__name__).error(
            "build history at %s is unavailable, pages will show no builds: %s", path, e)
        return None


def _quota(config):
    """The build quota of each client, or None when there is none."""
    if config.client_builds is None:
        return None
    import os

    from .quota import BuildQuota
    from builders.jobs.builds import UPLOAD_MARGIN
    per_hour, at_once = config.client_builds
    return BuildQuota(os.path.join(config.state_path, "quotas.json"), per_hour=per_hour,
                      at_once=at_once, hold_seconds=config.nix_timeout + UPLOAD_MARGIN
                      + config.build_queue_timeout + 60)


def _nix_cache(config):
    """The Nix binary cache built closures are copied to, or None."""
    if not config.nix_cache:
        return None
    from builders.nixbuild.nixcache import BinaryCache
    return BinaryCache(config.nix_cache, config.nix_cache_key,
                       timeout=config.nix_timeout + 300)


def make_images(config: Config, store, *, nix=None):
    """The image service and the parts it orchestrates, for `config`."""
    import os

    from storage import lifecycle
    from builders import sources
    from builders.build import ImageBuilder
    from builders.jobs.claims import Claims
    from builders.jobs.failures import Failures, Settings
    from builders.jobs.jobs import Jobs
    from builders.layers.layerstore import LayerStore
    from builders.jobs.locks import BuildLocks
    from builders.nixbuild.nix import Nix
    from builders.layers.popularity import Popularity
    from builders.sources.revisions import Revisions
    from builders.service import ImageService

    # builds root what they built here (Nix.roots): this machine's, like its store
    nix = nix or Nix(roots_path=config.gc_roots_path)
    layerstore = LayerStore(store, config.compression)
    return ImageService(
        store,
        revisions=Revisions(sources.from_config(config), store, refresh=config.source_refresh,
                            strict=config.strict_tags),
        failures=Failures(store, verdict_seconds=config.failure_ttl, settings=Settings(
            nix_timeout=config.nix_timeout, platforms=config.platforms,
            nix_config=config.nix_config, nix_conf=os.path.join(config.nix_conf_dir, "nix.conf"))),
        locks=BuildLocks(config.lock_path, max_builds=config.max_builds,
                         queue_timeout=config.build_queue_timeout),
        claims=Claims(store, lease=config.build_lease),
        builder=ImageBuilder(store, nix=nix, popularity=Popularity(store, config.popularity_url),
                             layerstore=layerstore, nix_timeout=config.nix_timeout,
                             max_layers=config.max_layers),
        layerstore=layerstore, nix=nix, jobs=Jobs(),
        history=_history(config.history_path),
        nix_timeout=config.nix_timeout, pull_wait=config.pull_wait, platforms=config.platforms,
        mark_every=lifecycle.mark_every(config.retention), quota=_quota(config),
        nix_cache=_nix_cache(config))


def _check_blob_folders(store):
    """With NIXERY_BLOB_ACCEL the web server in front reads blob files as
    its own user: say so at start when a folder on the way closes them off,
    not with a 403 on every blob."""
    import logging
    closed = store.closed_folder()
    if closed:
        logging.getLogger(__name__).warning(
            "NIXERY_BLOB_ACCEL: %s cannot be entered by other users%s, so the web server in "
            "front cannot send blobs from %s (chmod o+x it, or set NIXERY_STORAGE_GROUP to a "
            "group of the web server's user)", closed,
            "" if store.group is None else " or the storage group", store.root)


def create_app(config: Config | None = None, *, nix=None):
    """Build the app; gunicorn runs `app:create_app()`, which reads the environment."""
    import threading

    import cachetools
    from flask import Flask, request

    import storage as storage_mod

    from . import auth, commands, errors, front, front_reports, logs, metrics, ops, upkeep, web
    from .proxy import Forwarded, Proxies
    from .registry import RegistryAPI
    from .scope import ROUTE, RequestScope

    config = config or Config.from_env()
    logs.configure(config.log_level, config.log_format)
    app = Flask(__name__)
    app.config["REGISTRY"] = config
    store = app.extensions["storage"] = storage_mod.from_config(config)
    if config.blob_accel:
        _check_blob_folders(store)
    images = app.extensions["images"] = make_images(config, store, nix=nix)
    # package lookups for the page: an answer is kept, a failure is not
    app.extensions["lookups"] = cachetools.cached(
        cachetools.TTLCache(maxsize=512, ttl=web.LOOKUP_SECONDS), lock=threading.Lock())(
        images.lookup)
    app.extensions["examples"] = web.Examples(images)
    app.extensions["nix_check"] = ops.NixCheck()
    from builders.nixbuild.nixremote import RemoteBuilders
    app.extensions["nix_builders"] = RemoteBuilders()
    app.extensions["stored"] = metrics.StoredCollector(store)
    # /v2 is answered below Flask (app/registry.py says why); pages and
    # operators' endpoints by Flask; both within one request scope
    from storage.lifecycle import mark_every
    api = RegistryAPI(app.wsgi_app, store, images, blob_accel=config.blob_accel,
                      digest_seconds=mark_every(config.retention))
    authenticator = auth.from_config(config) if config.authenticates else None
    if authenticator is not None:
        api = auth.Authenticate(api, authenticator)
    # the caching nginx in front asks whether a request may be answered
    api = front.FrontAuth(api, authenticator)
    if config.front_reports:
        # started by gunicorn's workers (app/http/gunicorn_conf.py), not by commands
        app.extensions["front_reports"] = front_reports.receiver(config.front_reports)
    app.wsgi_app = Forwarded(RequestScope(api), Proxies(config.forwarded_allow_ips))

    @app.before_request
    def name_route():
        request.environ[ROUTE] = request.url_rule.endpoint if request.url_rule else "unmatched"

    # image names hold '/' and anything a client sends; the build page routes on them
    app.url_map.converters["anypath"] = web.AnyPathConverter
    app.register_blueprint(web.bp)
    app.register_blueprint(ops.bp)
    errors.register(app)
    app.cli.add_command(commands.prebuild)
    app.cli.add_command(commands.sbom)
    app.cli.add_command(upkeep.gc)
    from .cli import show_config
    app.cli.add_command(show_config)
    app.cli.add_command(upkeep.failures)
    return app
