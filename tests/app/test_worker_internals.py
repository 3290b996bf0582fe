"""The gunicorn internals app/worker.py relies on, checked against the
installed gunicorn, and the plain gthread worker it falls back to."""
from __future__ import annotations

import logging
import os
import socket
import threading
import time

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.http.unreader import Unreader
from gunicorn.workers.gthread import TConn, ThreadWorker

from app import worker


def test_the_installed_gunicorn_has_every_internal_the_worker_uses():
    # fails on a gunicorn upgrade that changes them: app/worker.py would
    # serve with plain gthread workers, so look at what changed
    assert worker.missing_internals() == []
    assert worker.Worker is worker.LingeringWorker


def handle_taking_a_deadline(self, conn, deadline):
    return False


def handle_returning_connection_state(self, conn):
    return conn.state


def unreader_without_buffer(self):
    pass


@pytest.mark.parametrize("owner,name,replacement,named", [
    (ThreadWorker, "handle", handle_taking_a_deadline, "handle(self, conn)"),
    (ThreadWorker, "enqueue_req", None, "enqueue_req"),
    (ThreadWorker, "handle", handle_returning_connection_state, "conn.state"),
    (Unreader, "__init__", unreader_without_buffer, "unreader.buf"),
])
def test_a_missing_internal_falls_back_to_plain_gthread(
        monkeypatch, caplog, owner, name, replacement, named):
    if replacement is None:
        monkeypatch.delattr(owner, name)
    else:
        monkeypatch.setattr(owner, name, replacement)
    missing = worker.missing_internals()
    assert any(named in m for m in missing), missing
    with caplog.at_level(logging.WARNING, logger=worker.__name__):
        chosen = worker.worker_class()
    assert chosen is worker.PlainWorker
    assert issubclass(chosen, ThreadWorker)
    assert not {"__init__", "enqueue_req", "handle"} & set(vars(chosen))
    [record] = [r for r in caplog.records if r.name == worker.__name__]
    assert record.levelno == logging.WARNING
    assert "falls back to plain gthread workers" in record.getMessage()
    assert named in record.getMessage()


def test_no_warning_when_nothing_is_missing(caplog):
    with caplog.at_level(logging.DEBUG, logger=worker.__name__):
        assert worker.worker_class() is worker.LingeringWorker
    assert not [r for r in caplog.records if r.name == worker.__name__]


# _next_request_soon on a real gunicorn connection over a socketpair

@pytest.fixture
def pair():
    ours, peer = socket.socketpair()
    yield ours, peer
    ours.close()
    peer.close()


@pytest.fixture
def conn(pair):
    conn = TConn(Config(), pair[0], None, None)
    conn.init()  # default settings: an HTTP/1 parser, nothing read
    return conn


def timed(func, *args):
    start = time.monotonic()
    result = func(*args)
    return result, time.monotonic() - start


def test_bytes_read_ahead_count_as_the_next_request(conn, monkeypatch):
    # a long linger, so waiting on the (empty) socket could not go unnoticed
    monkeypatch.setattr(worker, "LINGER", 5.0)
    conn.parser.unreader.unread(b"GET /v2/ HTTP/1.1\r\n")
    result, elapsed = timed(worker._next_request_soon, conn)
    assert result is True
    assert elapsed < 1


def test_nothing_to_read_gives_up_after_the_linger(conn):
    result, elapsed = timed(worker._next_request_soon, conn)
    assert result is False
    assert worker.LINGER * 0.9 <= elapsed < 1


def test_a_request_already_sent_is_seen(conn, pair):
    pair[1].sendall(b"GET /v2/ HTTP/1.1\r\n")
    assert worker._next_request_soon(conn) is True


def test_a_request_sent_during_the_linger_is_seen(conn, pair, monkeypatch):
    monkeypatch.setattr(worker, "LINGER", 5.0)
    timer = threading.Timer(0.05, pair[1].sendall, [b"GET /v2/ HTTP/1.1\r\n"])
    timer.start()
    try:
        result, elapsed = timed(worker._next_request_soon, conn)
    finally:
        timer.join()
    assert result is True
    assert elapsed < 4


def test_the_peer_closing_is_seen(conn, pair):
    pair[1].close()
    assert worker._next_request_soon(conn) is True


# handle() of real workers on a real TCP connection

def app(environ, start_response):
    body = environ["PATH_INFO"].encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


@pytest.fixture
def make_worker():
    made = []

    def make(cls):
        cfg = Config()
        made.append(cls(0, os.getppid(), [], None, 30, cfg, Logger(cfg)))
        made[-1].wsgi = app
        return made[-1]
    yield make
    for w in made:
        w.tmp.close()


@pytest.fixture
def tcp():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, addr = listener.accept()
    client.settimeout(5)
    conn = TConn(Config(), server, addr, server.getsockname())
    yield conn, client
    client.close()
    server.close()


def get(path, close=False):
    extra = b"Connection: close\r\n" if close else b""
    return b"GET %s HTTP/1.1\r\nHost: registry\r\n%s\r\n" % (path.encode(), extra)


def responses(client, count):
    """The bodies of the next `count` responses; then nothing more is sent."""
    data, bodies = b"", []
    while len(bodies) < count:
        head, sep, rest = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), None)
        if sep and length is not None and len(rest) >= length:
            bodies.append(rest[:length].decode())
            data = rest[length:]
            continue
        chunk = client.recv(65536)
        assert chunk, data
        data += chunk
    assert data == b""
    client.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.recv(1)
    return bodies


def test_gthread_handle_returns_true_for_a_kept_alive_request(make_worker, tcp):
    conn, client = tcp
    client.sendall(get("/1"))
    assert ThreadWorker.handle(make_worker(worker.PlainWorker), conn) is True
    assert responses(client, 1) == ["/1"]


def test_gthread_handle_returns_false_when_the_connection_closes(make_worker, tcp):
    conn, client = tcp
    client.sendall(get("/1", close=True))
    assert ThreadWorker.handle(make_worker(worker.PlainWorker), conn) is False
    assert responses(client, 1) == ["/1"]


def test_the_thread_answers_the_next_request_itself(make_worker, tcp):
    conn, client = tcp
    w = make_worker(worker.LingeringWorker)
    w._queued = 1  # as enqueue_req() left it for this connection
    client.sendall(get("/1") + get("/2") + get("/3"))
    assert w.handle(conn) is True
    assert responses(client, 3) == ["/1", "/2", "/3"]
    assert w._queued == 0


def test_the_connection_goes_back_when_another_waits(make_worker, tcp):
    conn, client = tcp
    w = make_worker(worker.LingeringWorker)
    w._queued = 2  # this connection and another one
    client.sendall(get("/1") + get("/2"))
    assert w.handle(conn) is True
    assert responses(client, 1) == ["/1"]
    # gunicorn's finish_request() queues it again for what it read ahead
    assert conn.parser.unreader.buf.getvalue() == get("/2")


def test_a_stopping_worker_keeps_no_connection(make_worker, tcp):
    conn, client = tcp
    w = make_worker(worker.LingeringWorker)
    w._queued = 1

    def stopped_while_answering(environ, start_response):
        w.alive = False  # as SIGTERM's handle_exit() would, mid-request
        return app(environ, start_response)
    w.wsgi = stopped_while_answering
    client.sendall(get("/1") + get("/2"))
    assert w.handle(conn) is True
    assert responses(client, 1) == ["/1"]
