"""NIXERY_HTTP_WORKER=gthread: the registry under gunicorn's stock gthread
worker, without app/http/worker.py, pulled from by a real client."""
from __future__ import annotations

import pytest

from tests.e2e.conftest import registry
from tests.e2e.test_clients import in_root, skopeo_copy, unpack


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    yield from registry(tmp_path_factory, "registry-gthread", NIXERY_HTTP_WORKER="gthread")


def test_skopeo_pulls_from_the_stock_gthread_worker(stock, tmp_path):
    skopeo_copy(stock, "shell/hello", tmp_path / "oci")
    rootfs = unpack(tmp_path / "oci", tmp_path / "bundle")
    assert in_root(rootfs, "hello") == "Hello, world!\n"
    log = stock.read_log()
    assert "Using worker: gthread" in log and "app.http.worker" not in log
    assert '"GET /v2/shell/hello/manifests/latest" 200 ' in log
    assert "Traceback" not in log
