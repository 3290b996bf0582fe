"""The registry's Flask application."""
from __future__ import annotations

import logging

from flask import Flask

from builders import sources
from builders.service import ImageService
import storage as storage_mod

from . import errors, registry, web
from .config import Config


def create_app(config: Config | None = None, *, nix=None) -> Flask:
    """Build the app; gunicorn runs `app:create_app()`, which reads the environment."""
    config = config or Config.from_env()
    logging.basicConfig(level=config.log_level,
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    app = Flask(__name__)
    app.config["REGISTRY"] = config
    store = storage_mod.from_config(config)
    app.extensions["storage"] = store
    app.extensions["images"] = ImageService(
        store, sources.from_config(config), nix=nix,
        nix_timeout=config.nix_timeout, max_layers=config.max_layers,
        popularity_url=config.popularity_url, compression=config.compression)
    app.register_blueprint(registry.bp)
    app.register_blueprint(web.bp)
    errors.register(app)
    return app
