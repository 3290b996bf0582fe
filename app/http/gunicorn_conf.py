"""gunicorn's settings for the registry, derived from its configuration.

Packaged with the registry: `nix-image-registry serve` runs gunicorn with
them, and the checkout's gunicorn.conf.py loads them for `gunicorn -c`.
"""
import multiprocessing
import os
import shutil
import sys

from app.config import Config, ConfigError
from app.settings import HTTP_WORKERS

try:
    _config = Config.from_env()
except ConfigError as e:
    sys.exit(e.format_message())

# Workers count metrics into shared files; this must be set before any
# worker imports prometheus_client.
_metrics = _config.metrics_path or _config.default_metrics_path
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics

wsgi_app = "app:create_app()"
bind = [f"{_config.listen_address}:{_config.port}"]

# Builds wait on Nix subprocesses, so threads serve other pulls meanwhile.
# gthread, keeping a busy kept-alive connection on its thread and reading
# plain requests itself (app/http/worker.py); or, with NIXERY_HTTP_WORKER=gthread,
# gunicorn's own.
worker_class = HTTP_WORKERS[_config.http_worker]
workers = max(2, multiprocessing.cpu_count())
threads = 16

# A stopping worker waits for its build jobs (worker_exit below): Nix time
# plus making and storing the layers.  Requests themselves wait for a build
# at most NIXERY_PULL_WAIT.
timeout = int(_config.nix_timeout) + 300
graceful_timeout = timeout
keepalive = 75

# Behind a load balancer: believe X-Forwarded-* only from these peers.  The
# registry's rule for who the client is (app/proxy.py) reads the same list,
# checked and normalized by app/config.py.
forwarded_allow_ips = _config.forwarded_allow_ips

# gunicorn's control socket (gunicornc) would default to one path per user,
# $XDG_RUNTIME_DIR/gunicorn.ctl or ~/.gunicorn/gunicorn.ctl, shared by every
# registry that user runs on the machine; the registry is managed with
# signals (HUP, TERM, TTIN/TTOU) as before, so it makes none.
control_socket_disable = True

accesslog = "-"
errorlog = "-"
loglevel = _config.log_level.lower()
logger_class = ("app.logs.JsonAccessLogger" if _config.log_format == "json"
                else "app.logs.AccessLogger")


def on_starting(server):
    # gunicorn decides the scheme from the peers it trusts, the registry the
    # client: another list given to gunicorn alone would split them
    if ",".join(server.cfg.forwarded_allow_ips) != forwarded_allow_ips:
        sys.exit("configuration error: gunicorn's forwarded_allow_ips was set apart from "
                 "FORWARDED_ALLOW_IPS (by --forwarded-allow-ips or GUNICORN_CMD_ARGS): "
                 "set FORWARDED_ALLOW_IPS alone")
    # counts of workers from an earlier run are not this run's
    shutil.rmtree(_metrics, ignore_errors=True)
    os.makedirs(_metrics, exist_ok=True)


def post_worker_init(worker):
    # nginx's reports of what it answered from its cache (NIXERY_FRONT_REPORTS):
    # every worker listens (UDP) or tries to be the one that reads the file,
    # and counts into the shared metrics
    app = getattr(worker, "wsgi", None)
    reports = getattr(app, "extensions", {}).get("front_reports")
    if reports is not None:
        reports.start()


def worker_exit(server, worker):
    # its connections no longer count against taking new ones (app/http/balance.py)
    if hasattr(worker, "left"):
        worker.left()
    # the counts of answers the worker gave again (app/http/replay.py),
    # added to the metrics once a second: the last second's too
    replays = getattr(getattr(worker, "_plain", None), "replays", None)
    if replays is not None:
        replays.stop()
    # and the front's reports it read last (another worker reads on)
    app = getattr(worker, "wsgi", None)
    reports = getattr(app, "extensions", {}).get("front_reports")
    if reports is not None:
        reports.stop()
    # Builds are jobs that outlive the requests that started them
    # (builders/jobs/jobs.py): a worker that stops (a HUP, a deploy, a
    # max-requests recycle) waits for its jobs before it exits, within
    # graceful_timeout, so no build is lost half done.
    images = getattr(app, "extensions", {}).get("images")
    jobs = images.jobs.running() if images is not None else []
    if jobs:
        server.log.info("worker %s waits for %d build job(s) before it exits: %s", worker.pid,
                        len(jobs), ", ".join(f"{job.name} ({job.progress()})" for job in jobs))
        for job in jobs:
            job.settle(graceful_timeout)


def child_exit(server, worker):
    if hasattr(worker, "left"):
        worker.left(worker.pid)  # killed, it could not say so itself
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)
