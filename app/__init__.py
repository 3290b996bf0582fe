"""The registry's Flask application.

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

    from builders.history import BuildHistory
    try:
        return BuildHistory(path)
    except (sqlite3.Error, OSError) as e:
        logging.getLogger(__name__).error(
            "build history at %s is unavailable, pages will show no builds: %s", path, e)
        return None


def create_app(config: Config | None = None, *, nix=None):
    """Build the app; gunicorn runs `app:create_app()`, which reads the environment."""
    from flask import Flask, g, request

    import storage as storage_mod
    from builders import sources
    from builders.locks import BuildLocks
    from builders.service import ImageService

    from . import errors, logs, metrics, ops, registry, web
    from .fastpath import FastPath
    from .proxy import TrustedProxyFix

    config = config or Config.from_env()
    logs.configure(config.log_level, config.log_format)
    app = Flask(__name__)
    app.config["REGISTRY"] = config
    store = storage_mod.from_config(config)
    app.extensions["storage"] = store
    images = app.extensions["images"] = ImageService(
        store, sources.from_config(config), nix=nix,
        nix_timeout=config.nix_timeout, max_layers=config.max_layers,
        source_refresh=config.source_refresh,
        locks=BuildLocks(config.lock_path, max_builds=config.max_builds,
                         queue_timeout=config.build_queue_timeout),
        history=_history(config.history_path),
        popularity_url=config.popularity_url, compression=config.compression)
    app.wsgi_app = TrustedProxyFix(FastPath(app.wsgi_app, store, images),
                                   config.forwarded_allow_ips)

    @app.before_request
    def tag_request():
        g.request_id = logs.new_request_id(request.headers.get("X-Request-ID"))
        g.request_id_token = logs.request_id.set(g.request_id)

    @app.after_request
    def count_request(resp):
        resp.headers["X-Request-ID"] = g.get("request_id", "-")
        route = g.get("route") or (request.url_rule.endpoint if request.url_rule else "unmatched")
        metrics.REQUESTS.labels(route, request.method, str(resp.status_code)).inc()
        return resp

    @app.teardown_request
    def untag_request(exc):
        token = g.pop("request_id_token", None)
        if token is not None:
            logs.request_id.reset(token)

    # names hold '/' and may hold anything a client sends: both blueprints route on it
    app.url_map.converters["anypath"] = registry.AnyPathConverter
    app.register_blueprint(registry.bp)
    app.register_blueprint(web.bp)
    app.register_blueprint(ops.bp)
    errors.register(app)
    return app
