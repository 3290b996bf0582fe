"""The gunicorn internals app/http/worker.py relies on (app/http/gthread_internals.py),
checked against the installed gunicorn; the plain gthread worker it falls
back to; and LingeringWorker on real connections."""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from concurrent import futures

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.http import message, wsgi
from gunicorn.http.unreader import Unreader
from gunicorn.workers.base import Worker
from gunicorn.workers.gthread import TConn, ThreadWorker

from app.http import gthread_internals, worker
from app.http.http1 import PlainHTTP


def test_the_installed_gunicorn_has_every_internal_the_worker_uses():
    # fails on a gunicorn upgrade that changes them: app/http/worker.py would
    # serve with plain gthread workers, so look at what changed
    assert gthread_internals.missing_internals() == []
    assert worker.Worker is worker.LingeringWorker


def handle_taking_a_deadline(self, conn, deadline):
    return False


def handle_returning_connection_state(self, conn):
    return conn.state


def unreader_without_buffer(self):
    pass


def init_process_taking_sockets(self, sockets):
    pass


def handle_exit_without_frame(self, sig):
    pass


def request_init_without_limits(self, cfg, unreader, peer_addr, req_number=1):
    pass


def worker_init_without_ppid(self, age, ppid, sockets, app, timeout, cfg, log):
    self.alive = True


@pytest.mark.parametrize("owner,name,replacement,named", [
    (ThreadWorker, "handle", handle_taking_a_deadline, "handle(self, conn)"),
    (ThreadWorker, "enqueue_req", None, "enqueue_req"),
    (ThreadWorker, "handle", handle_returning_connection_state, "conn.state"),
    (Unreader, "__init__", unreader_without_buffer, "unreader.buf"),
    (ThreadWorker, "init_process", init_process_taking_sockets, "init_process(self)"),
    (ThreadWorker, "handle_exit", handle_exit_without_frame, "handle_exit(self, sig, frame)"),
    # what app/http/http1.py and app/http/http1_response.py take from gunicorn
    (Unreader, "take_buffered", None, "Unreader.take_buffered()"),
    (Worker, "handle_error", handle_exit_without_frame, "Worker.handle_error("),
    (message.Request, "__init__", request_init_without_limits, "Request.limit_request_line"),
    (wsgi, "HEADER_VALUE_RE", None, "gunicorn.http.wsgi.HEADER_VALUE_RE"),
    (Worker, "__init__", worker_init_without_ppid, "'ppid'"),
])
def test_a_missing_internal_falls_back_to_plain_gthread(
        monkeypatch, caplog, owner, name, replacement, named):
    if replacement is None:
        monkeypatch.delattr(owner, name)
    else:
        monkeypatch.setattr(owner, name, replacement)
    missing = gthread_internals.missing_internals()
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


# handle() of real workers on a real TCP connection

def app(environ, start_response):
    body = environ["PATH_INFO"].encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


@pytest.fixture
def make_worker():
    """A worker as gunicorn's master makes it, then what init_process() sets
    up in the forked worker for handle() (not its poller or thread pool)."""
    made = []

    def make(cls, threads=1, keepalive=30):
        cfg = Config()
        cfg.set("threads", threads)
        cfg.set("keepalive", keepalive)
        w = cls(0, os.getppid(), [], None, 30, cfg, Logger(cfg))
        w.wsgi = app
        w.method_queue.init()
        if isinstance(w, worker.LingeringWorker):
            w._wakeup = worker.Wakeup()
            w._plain = PlainHTTP(w)  # as load_wsgi() makes it
        made.append(w)
        return w
    yield make
    for w in made:
        w.tmp.close()
        w.method_queue.close()
        if getattr(w, "_wakeup", None) is not None:
            w._wakeup.close()


def timed(func, *args):
    start = time.monotonic()
    result = func(*args)
    return result, time.monotonic() - start


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
    try:
        with pytest.raises(BlockingIOError):
            client.recv(1)
    finally:
        client.setblocking(True)
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
    # a pause longer than gthread's round trip, shorter than its keepalive
    later = threading.Timer(0.3, client.sendall, [get("/4", close=True)])
    later.start()
    try:
        assert w.handle(conn) is False  # the client's Connection: close
    finally:
        later.join()
    assert responses(client, 4) == ["/1", "/2", "/3", "/4"]
    assert (w._queued, w._held) == (0, 0)


def test_plain_requests_after_the_first_are_read_by_app_http1(make_worker, tcp):
    conn, client = tcp
    w = make_worker(worker.LingeringWorker)
    w._queued = 1
    served = []
    serve = w._plain.serve

    def spy(c):
        served.append(serve(c))
        return served[-1]
    w._plain.serve = spy
    post = b"POST /3 HTTP/1.1\r\nHost: registry\r\nContent-Length: 4\r\n\r\nbody"
    client.sendall(get("/1") + get("/2") + post + get("/4") + get("/5", close=True))
    assert w.handle(conn) is False
    assert responses(client, 5) == ["/1", "/2", "/3", "/4", "/5"]
    # /1 is gunicorn's (a connection's first request), /2 and /4 plain ones,
    # /3 (a body) and /5 (Connection: close) went back to gunicorn unread
    assert served == [True, None, True, None]
    assert (w._queued, w._held, w.nr) == (0, 0, 5)


def test_an_app_failing_on_a_plain_request_gets_gunicorns_500(make_worker, tcp, caplog):
    conn, client = tcp
    w = make_worker(worker.LingeringWorker)
    w._queued = 1

    def failing(environ, start_response):
        if environ["PATH_INFO"] == "/boom":
            raise RuntimeError("the app failed")
        return app(environ, start_response)
    w.wsgi = failing
    client.sendall(get("/1") + get("/boom"))
    assert w.handle(conn) is False  # to be closed after the error
    conn.sock.close()  # as gthread's finish_request() does then
    data = b""
    while chunk := client.recv(65536):
        data += chunk
    first, second = data.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 OK") and first.endswith(b"/1")
    assert second.startswith(b"500 Internal Server Error")
    assert b"the app failed" not in data and b"Traceback" not in data


def test_an_idle_connection_is_closed_after_gunicorns_keepalive(make_worker, tcp):
    conn, client = tcp
    w = make_worker(worker.LingeringWorker, keepalive=1)
    w._queued = 1
    client.sendall(get("/1"))
    result, elapsed = timed(w.handle, conn)
    assert result is False
    assert 1 <= elapsed < 3
    assert responses(client, 1) == ["/1"]


def test_the_peer_closing_ends_the_wait(make_worker, tcp):
    conn, client = tcp
    w = make_worker(worker.LingeringWorker)
    w._queued = 1
    client.sendall(get("/1"))
    later = threading.Timer(0.2, client.shutdown, [socket.SHUT_WR])
    later.start()
    try:
        result, elapsed = timed(w.handle, conn)
    finally:
        later.join()
    assert result is False
    assert elapsed < 3
    assert responses(client, 1) == ["/1"]


def test_the_connection_goes_back_when_another_waits(make_worker, tcp):
    conn, client = tcp
    w = make_worker(worker.LingeringWorker)
    w._queued = 2  # this connection and another one, and one thread
    client.sendall(get("/1") + get("/2"))
    assert w.handle(conn) is True
    assert responses(client, 1) == ["/1"]
    # gunicorn's finish_request() queues it again for what it read ahead
    assert conn.parser.unreader.buf.getvalue() == get("/2")


# the thread pool of a real worker with one thread: a connection its thread
# waits on, and another one queued for it

@pytest.fixture
def tcp2(tcp):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, addr = listener.accept()
    client.settimeout(5)
    yield tcp, (TConn(Config(), server, addr, server.getsockname()), client)
    client.close()
    server.close()


@pytest.fixture
def pool_worker(make_worker):
    w = make_worker(worker.LingeringWorker)
    w.tpool = futures.ThreadPoolExecutor(max_workers=w.cfg.threads)
    yield w
    w.alive = False
    w._wakeup.set(w.cfg.threads)
    w.tpool.shutdown(wait=True)


def answered_and_waiting(w, conn, client, path):
    """Queue the connection as gunicorn does; once answered its thread waits on it."""
    done = []
    w.tpool.submit(lambda: None).add_done_callback(done.append)  # the thread is up
    client.sendall(get(path))
    future = submit(w, conn)
    assert responses(client, 1) == [path]
    assert not future.done()
    return future


def submit(w, conn):
    """enqueue_req(), keeping the future that gthread hands to its main thread."""
    futures_made = []
    real_submit = w.tpool.submit

    def submit_keeping(*args):
        futures_made.append(real_submit(*args))
        return futures_made[-1]
    w.tpool.submit = submit_keeping
    try:
        w.enqueue_req(conn)
    finally:
        w.tpool.submit = real_submit
    return futures_made[0]


def test_a_queued_connection_takes_the_thread_from_a_waiting_one(pool_worker, tcp2):
    (idle, idle_client), (other, other_client) = tcp2
    waiting = answered_and_waiting(pool_worker, idle, idle_client, "/idle")
    other_client.sendall(get("/other"))
    started = time.monotonic()
    second = submit(pool_worker, other)
    assert responses(other_client, 1) == ["/other"]
    assert time.monotonic() - started < 1  # not gunicorn's keepalive (30 s here)
    # the idle one went back to gunicorn's poller, kept alive
    assert waiting.result(timeout=1) is True
    assert not second.done()  # and the thread waits on the other one now


def test_a_wakeup_with_nothing_queued_lets_no_thread_go(pool_worker, tcp):
    conn, client = tcp
    waiting = answered_and_waiting(pool_worker, conn, client, "/1")
    pool_worker._wakeup.set()  # e.g. left from a connection a freed thread took
    time.sleep(0.3)
    assert not waiting.done()
    client.sendall(get("/2"))
    assert responses(client, 1) == ["/2"]


def test_a_stopping_worker_lets_go_of_waiting_connections(pool_worker, tcp):
    conn, client = tcp
    waiting = answered_and_waiting(pool_worker, conn, client, "/1")
    started = time.monotonic()
    pool_worker.handle_exit(signal.SIGTERM, None)
    # True: gthread's finish_request() keeps it briefly, as it does with every
    # kept-alive connection of a stopping worker, then closes it
    assert waiting.result(timeout=5) is True
    assert time.monotonic() - started < 1


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
