"""gunicorn's settings for `gunicorn -c gunicorn.conf.py` in a checkout: the
packaged ones (app/http/gunicorn_conf.py), which `nix-image-registry serve` uses."""
from app.http.gunicorn_conf import *  # noqa: F401,F403
