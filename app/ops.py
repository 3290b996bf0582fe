"""For operators: health, readiness and metrics."""
from __future__ import annotations

import logging
import threading
import time

from flask import Blueprint, Response, current_app, json

from builders import process
from . import metrics

logger = logging.getLogger(__name__)

bp = Blueprint("ops", __name__)

# How long a successful Nix check is believed: readiness probes come often.
NIX_CHECK_TTL = 30
_nix_ok = {"at": 0.0}
_nix_lock = threading.Lock()


@bp.route("/healthz")
def healthz():
    return Response("ok\n", mimetype="text/plain")


def _check_storage():
    storage = current_app.extensions["storage"]
    storage.exists("readyz/probe")  # any answer, even "no", means it is reachable
    return "ok"


def _check_nix():
    with _nix_lock:
        if time.monotonic() - _nix_ok["at"] < NIX_CHECK_TTL:
            return "ok"
    done = process.run(["nix-store", "--version"], timeout=10)
    if done.returncode != 0:
        raise RuntimeError(done.stderr_tail.strip() or f"exit code {done.returncode}")
    with _nix_lock:
        _nix_ok["at"] = time.monotonic()
    return "ok"


@bp.route("/readyz")
def readyz():
    checks = {}
    for name, check in (("storage", _check_storage), ("nix", _check_nix)):
        try:
            checks[name] = check()
        except Exception as e:  # any failure makes the instance unready, and says why
            checks[name] = f"failing: {e}"
            logger.warning("readiness check %s failed: %s", name, e)
    ready = all(v == "ok" for v in checks.values())
    return Response(json.dumps({"ready": ready, "checks": checks}) + "\n",
                    status=200 if ready else 503, mimetype="application/json")


@bp.route("/metrics")
def metrics_page():
    body, content_type = metrics.exposition(current_app.config["REGISTRY"].metrics_path)
    return Response(body, content_type=content_type)
