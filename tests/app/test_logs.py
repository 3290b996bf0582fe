"""The access log (app/logs.py) as gunicorn sets it up: one line per
request, written straight to gunicorn's own handler or through logging."""
from __future__ import annotations

import datetime
import json
import logging
import os

import pytest
from gunicorn.config import Config

from app.logs import AccessLogger, JsonAccessLogger

DIGEST = "sha256:" + "ab" * 32


class Response:
    """What gunicorn's access() reads of a response."""
    status_code = 200
    sent = 0
    headers = [("Docker-Content-Digest", DIGEST), ("Content-Length", "0"),
               ("X-Request-ID", "req-1")]


def environ(peer="127.0.0.1", forwarded="203.0.113.7"):
    return {"REMOTE_ADDR": peer, "HTTP_X_FORWARDED_FOR": forwarded, "REQUEST_METHOD": "GET",
            "RAW_URI": f"/v2/shell/hello/blobs/{DIGEST}", "HTTP_USER_AGENT": "skopeo/1.9",
            "REMOTE_USER": "alice"}


LINE = (f'203.0.113.7 alice "GET /v2/shell/hello/blobs/{DIGEST}" 200 0 1.2ms [req-1] '
        '"skopeo/1.9"\n')


@pytest.fixture
def make_logger(tmp_path):
    made = []

    def make(cls=AccessLogger, **settings):
        cfg = Config()
        cfg.set("accesslog", str(tmp_path / "access.log"))
        cfg.set("forwarded_allow_ips", "127.0.0.1")
        for name, value in settings.items():
            cfg.set(name, value)
        made.append(cls(cfg))
        return made[-1]
    yield make
    for log in made:
        for handler in list(log.access_log.handlers):
            if getattr(handler, "_gunicorn", False):
                log.access_log.removeHandler(handler)
                handler.close()


def log_one(log, env=None):
    log.access(Response, None, env or environ(), datetime.timedelta(microseconds=1234))


def test_a_line_per_request(make_logger, tmp_path):
    log = make_logger()
    log_one(log)
    log_one(log)
    assert (tmp_path / "access.log").read_text() == LINE * 2


def test_the_client_is_the_forwarded_address_only_from_a_trusted_peer(make_logger, tmp_path):
    log = make_logger()
    log_one(log, environ(peer="198.51.100.9"))
    assert (tmp_path / "access.log").read_text().startswith('198.51.100.9 alice "GET ')


def test_the_client_is_the_one_app_proxy_names(make_logger, tmp_path):
    """Trusted ranges, the rightmost untrusted entry: never the proxy, nor
    what the client wrote at the left."""
    log = make_logger(forwarded_allow_ips="127.0.0.0/8,10.0.0.0/8")
    log_one(log, environ(peer="127.0.0.2", forwarded="192.0.2.66, 203.0.113.7, 10.1.1.1"))
    log_one(log, environ(peer="10.9.9.9", forwarded="192.0.2.66, 203.0.113.7"))
    log_one(log, environ(peer="10.9.9.9", forwarded="192.0.2.66, 10.1.1.1, 127.0.0.1"))
    clients = [line.split()[0] for line in (tmp_path / "access.log").read_text().splitlines()]
    assert clients == ["203.0.113.7", "203.0.113.7", "192.0.2.66"]


def test_json_lines(make_logger, tmp_path):
    log = make_logger(JsonAccessLogger)
    log_one(log)
    event = json.loads((tmp_path / "access.log").read_text())
    assert event.pop("time").endswith("Z")
    assert event == {"client": "203.0.113.7", "user": "alice", "method": "GET",
                     "path": f"/v2/shell/hello/blobs/{DIGEST}", "status": 200, "bytes": 0,
                     "duration_ms": 1.2, "user_agent": "skopeo/1.9", "request_id": "req-1",
                     "logger": "access"}


def test_a_reopened_file_gets_the_next_lines(make_logger, tmp_path):
    # what logrotate does: move the file away, then USR1 makes gunicorn reopen it
    log = make_logger()
    log_one(log)
    os.rename(tmp_path / "access.log", tmp_path / "access.log.1")
    log.reopen_files()
    log_one(log)
    assert (tmp_path / "access.log.1").read_text() == LINE
    assert (tmp_path / "access.log").read_text() == LINE


def test_a_handler_of_its_own_format_gets_lines_through_logging(make_logger, tmp_path):
    log = make_logger()
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(self.format(record))
    keep = Keep()
    keep.setFormatter(logging.Formatter("access: %(message)s"))
    log.access_log.addHandler(keep)
    try:
        log.setup(log.cfg)  # as a configuration reload does
        log_one(log)
    finally:
        log.access_log.removeHandler(keep)
    assert seen == ["access: " + LINE.rstrip("\n")]
    assert (tmp_path / "access.log").read_text() == LINE


def test_no_line_without_an_access_log(make_logger, tmp_path):
    log = make_logger(accesslog=None)
    log_one(log)
    assert not (tmp_path / "access.log").exists()


def test_a_line_for_an_answer_gunicorn_made_for_a_failed_request(make_logger, tmp_path):
    # gunicorn's handle_error() logs its 500 with a Response that has only
    # a status line: the line still says 500, and no exception escapes
    from gunicorn.http.wsgi import Response as GunicornResponse
    failed = GunicornResponse(type("Req", (), {"version": (1, 1), "method": "GET"})(), None,
                              Config())
    failed.status = "500 Internal Server Error"
    failed.response_length = 0
    log = make_logger()
    log.access(failed, None, environ(), datetime.timedelta(microseconds=1234))
    line = (tmp_path / "access.log").read_text()
    assert f'"GET /v2/shell/hello/blobs/{DIGEST}" 500 0 1.2ms [-] ' in line


def only_its_file(log):
    """The logger with its own file alone (pytest's log capture may have
    put handlers of its own on gunicorn's shared logger)."""
    for handler in list(log.access_log.handlers):
        if not getattr(handler, "_gunicorn", False):
            log.access_log.removeHandler(handler)
    log.setup(log.cfg)
    return log


def test_lines_written_later_come_in_order_at_the_next_write(make_logger, tmp_path):
    log = only_its_file(make_logger())
    line = (f'203.0.113.7 - "GET /v2/shell/hello/blobs/{DIGEST}" 200 0 0.1ms [req-%d] '
            '"skopeo/1.9"\n')
    for i in range(3):
        log.access_line("203.0.113.7", "-", "GET", f"/v2/shell/hello/blobs/{DIGEST}", 200, 0,
                        0.1, "skopeo/1.9", f"req-{i}", later=True)
    assert not (tmp_path / "access.log").exists() or (tmp_path / "access.log").read_text() == ""
    log.write_later()
    assert (tmp_path / "access.log").read_text() == "".join(line % i for i in range(3))
    log.write_later()  # nothing waits: nothing more is written
    assert (tmp_path / "access.log").read_text().count("\n") == 3


def test_lines_written_later_do_not_wait_beyond_their_limit(make_logger, tmp_path):
    log = only_its_file(make_logger())
    path = f"/v2/shell/hello/blobs/{DIGEST}"
    n = log.LATER_CHARS // len(path) + 1
    for i in range(n):
        log.access_line("203.0.113.7", "-", "GET", path, 200, 0, 0.1, "", f"req-{i}",
                        later=True)
    # written once that many characters waited, without a write_later():
    # never more than that waits
    written = (tmp_path / "access.log").read_text().splitlines()
    assert written and [line.split("[")[1].split("]")[0] for line in written] == \
        [f"req-{i}" for i in range(len(written))]
    assert sum(len(line) for line in log._later) < log.LATER_CHARS
    log.write_later()
    assert (tmp_path / "access.log").read_text().count("\n") == n


def test_a_handler_of_its_own_gets_a_later_line_at_once(make_logger, tmp_path):
    log = only_its_file(make_logger())
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())
    keep = Keep()
    log.access_log.addHandler(keep)
    try:
        log.setup(log.cfg)
        log.access_line("203.0.113.7", "-", "GET", "/v2/", 200, 0, 0.1, "", "req-1", later=True)
    finally:
        log.access_log.removeHandler(keep)
    assert len(seen) == 1 and "[req-1]" in seen[0]
