"""For operators: health, readiness and metrics."""
from __future__ import annotations

import logging
import threading
import time

from flask import Blueprint, Response, current_app, json, request

from builders import process
from . import metrics, proxy

logger = logging.getLogger(__name__)

bp = Blueprint("ops", __name__)


class NixCheck:
    """Whether Nix runs here; a success is believed for `ttl` seconds, since
    readiness probes come often."""

    def __init__(self, ttl: float = 30, clock=time.monotonic):
        self.ttl = ttl
        self._clock = clock
        self._ok_at: float | None = None
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            if self._ok_at is not None and self._clock() - self._ok_at < self.ttl:
                return "ok"
        done = process.run(["nix-store", "--version"], timeout=10)
        if done.returncode != 0:
            raise RuntimeError(done.stderr_tail.strip() or f"exit code {done.returncode}")
        with self._lock:
            self._ok_at = self._clock()
        return "ok"


@bp.route("/healthz")
def healthz():
    return Response("ok\n", mimetype="text/plain")


def _check_storage():
    current_app.extensions["storage"].check()
    return "ok"


def _nix_beyond_this_machine() -> dict:
    """The binary cache and remote builders, where configured: reported,
    not required (images already built pull without them)."""
    found = {}
    cache = current_app.extensions["images"].nix_cache
    if cache is not None:
        found["nix_cache"] = cache.status()
    try:
        builders = current_app.extensions["nix_builders"].report()
    except Exception as e:  # Nix could not say: reported like a failing builder
        builders = [{"error": f"cannot read Nix's builders: {e}"}]
    if builders:
        found["nix_builders"] = builders
    return found


@bp.route("/readyz")
def readyz():
    checks = {}
    for name, check in (("storage", _check_storage), ("nix", current_app.extensions["nix_check"])):
        try:
            checks[name] = check()
        except Exception as e:  # any failure makes the instance unready, and says why
            checks[name] = f"failing: {e}"
            logger.warning("readiness check %s failed: %s", name, e)
    ready = all(v == "ok" for v in checks.values())
    # Probes need no credentials, but why a check fails, and where the
    # packages come from, name this machine's paths and hosts: those are
    # for signed-in users and for callers on this machine itself.
    if request.environ.get("REMOTE_USER") or proxy.is_local(request.environ):
        # the package source is reported, not required: cached images still
        # pull without it, and an outage of it would otherwise take every
        # instance out of the load balancer at once
        source = current_app.extensions["images"].revisions.state.report()
        source["describe"] = current_app.extensions["images"].source.describe()
        body = {"ready": ready, "checks": checks, "package_source": source,
                **_nix_beyond_this_machine()}
    else:
        body = {"ready": ready,
                "checks": {k: "ok" if v == "ok" else "failing" for k, v in checks.items()},
                "details": "for signed-in users, and callers on this machine"}
    return Response(json.dumps(body) + "\n", status=200 if ready else 503,
                    mimetype="application/json")


@bp.route("/metrics")
def metrics_page():
    body, content_type = metrics.exposition(current_app.config["REGISTRY"].metrics_path,
                                            extra=[current_app.extensions["stored"]])
    return Response(body, content_type=content_type)
