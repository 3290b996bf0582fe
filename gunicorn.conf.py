"""gunicorn settings, derived from the registry's configuration."""
import multiprocessing
import os
import shutil
import sys

from app.config import Config, ConfigError

try:
    _config = Config.from_env()
except ConfigError as e:
    sys.exit(f"configuration error: {e}")

# Workers count metrics into shared files; this must be set before any
# worker imports prometheus_client.
_metrics = _config.metrics_path or _config.default_metrics_path
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics

wsgi_app = "app:create_app()"
bind = [f"{_config.listen_address}:{_config.port}"]

# Builds wait on Nix subprocesses, so threads serve other pulls meanwhile.
# gthread, keeping a busy kept-alive connection on its thread (app/worker.py).
worker_class = "app.worker.Worker"
workers = max(2, multiprocessing.cpu_count())
threads = 16

# A manifest request may run a whole build: Nix time plus making and
# storing the layers.  A restart waits as long, so builds in flight finish.
timeout = int(_config.nix_timeout) + 300
graceful_timeout = timeout
keepalive = 75

# Behind a load balancer: believe X-Forwarded-* only from these peers.
forwarded_allow_ips = _config.forwarded_allow_ips

accesslog = "-"
errorlog = "-"
loglevel = _config.log_level.lower()
logger_class = ("app.logs.JsonAccessLogger" if _config.log_format == "json"
                else "app.logs.AccessLogger")


def on_starting(server):
    # counts of workers from an earlier run are not this run's
    shutil.rmtree(_metrics, ignore_errors=True)
    os.makedirs(_metrics, exist_ok=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)
