"""gunicorn with the registry's packaged settings: what `nix-image-registry
serve` runs, in an interpreter of its own (`python -m app.http.serving`).

Nothing here, nor the app package's own import (its configuration only),
imports prometheus_client before the settings (app/http/gunicorn_conf.py) set
the folder gunicorn's workers count metrics in together.
"""
from __future__ import annotations

import sys

from gunicorn.app.base import Application

PROG = "nix-image-registry serve"
# the gunicorn settings it runs with (gunicorn.conf.py loads them too)
GUNICORN_SETTINGS = "python:app.http.gunicorn_conf"


class Gunicorn(Application):
    """gunicorn's arbiter with the registry's packaged settings, then any
    gunicorn options given on the command line."""

    def __init__(self, args):
        self.args = list(args)
        super().__init__(usage=f"{PROG} [GUNICORN_OPTIONS]", prog=PROG)

    def load_config(self):
        self.load_config_from_module_name_or_filename(GUNICORN_SETTINGS)
        if not self.args:
            return
        parser = self.cfg.parser()
        parser.prog = PROG
        options = parser.parse_args(self.args)
        if options.args:
            parser.error("the registry is the only app it serves: "
                         f"unexpected {' '.join(options.args)}")
        for name, value in vars(options).items():
            if value is not None and name != "args":
                self.cfg.set(name.lower(), value)

    def load(self):
        from gunicorn import util
        return util.import_app(self.cfg.wsgi_app)


if __name__ == "__main__":
    Gunicorn(sys.argv[1:]).run()
