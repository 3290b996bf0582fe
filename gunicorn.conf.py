"""gunicorn settings, derived from the registry's configuration."""
import multiprocessing
import sys

from app.config import Config, ConfigError

try:
    _config = Config.from_env()
except ConfigError as e:
    sys.exit(f"configuration error: {e}")

wsgi_app = "app:create_app()"
bind = [f"{_config.listen_address}:{_config.port}"]

# Builds wait on Nix subprocesses, so threads serve other pulls meanwhile.
worker_class = "gthread"
workers = max(2, multiprocessing.cpu_count())
threads = 16

# A manifest request may run a whole build: Nix time plus making and
# storing the layers.
timeout = int(_config.nix_timeout) + 300
graceful_timeout = int(_config.nix_timeout) + 60
keepalive = 75

accesslog = "-"
errorlog = "-"
loglevel = _config.log_level.lower()
