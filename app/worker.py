"""gunicorn's gthread worker, keeping a connection on the thread that answered it.

gthread hands every kept-alive connection back to the worker's main thread
after each request: the socket goes into the poller, and when the next
request arrives it is queued to the thread pool again.  That round (the
poller waking, the queue, a thread waking, the GIL passed along) costs
more CPU than answering a cached manifest or checking a blob, about a dozen
context switches per request.  A pull is a run of requests on one
connection (a manifest, then blob after blob), and nginx in front
(deploy/nginx.conf) sends every request over a few kept-alive connections.

Here the thread that answered a connection keeps it and waits for its next
request itself, for as long as gunicorn would keep it alive, as long as no
connection is kept waiting for a thread: a connection queued while every
thread is taken wakes one waiting thread (a byte on a pipe), which hands its
connection back to the poller and takes the queued one.  A thread that is
answering rather than waiting hands its connection back after the request
it is on.  So a busy or idle client never makes another one wait, and a
stopping worker keeps no connection (handle_exit wakes them all).

This relies on gthread internals, not on a public gunicorn API:
`ThreadWorker.enqueue_req(conn)` queues a connection to the pool,
`ThreadWorker.handle(conn)` answers one request and returns True exactly
when the connection may be kept alive, `init_process()` runs in the forked
worker, `handle_exit(sig, frame)` on SIGTERM, and a connection has `sock`
and `parser.unreader.buf` (the bytes already read ahead).
missing_internals() checks them when this module is imported.  Without them
`Worker` is gunicorn's gthread worker unchanged and a warning says so;
tests/app/test_worker_internals.py fails, so an upgrade that breaks them is
noticed before it is deployed.
"""
from __future__ import annotations

import ast
import inspect
import io
import logging
import os
import select
import socket
import textwrap
import threading
import time

import gunicorn
from gunicorn import http
from gunicorn.config import Config
from gunicorn.workers import gthread
from gunicorn.workers.gthread import ThreadWorker

logger = logging.getLogger(__name__)

# How often a thread waiting on its connection looks up from it, to see a
# worker stopped without a signal (max_requests, its parent gone).
CHECK_EVERY = 1.0


def missing_internals() -> list[str]:
    """What the installed gunicorn lacks of the internals LingeringWorker uses.

    One description per missing or changed internal; empty when all are
    there.  Some things cannot be checked without running a worker (see
    _check_handle_returns); tests/app/test_worker_internals.py runs one.
    """
    missing = []
    for what, check in (
            ("ThreadWorker.enqueue_req/handle/init_process/handle_exit, alive", _check_methods),
            ("what ThreadWorker.handle() returns", _check_handle_returns),
            ("a connection's sock and parser.unreader.buf", _check_conn)):
        try:
            missing.extend(check())
        except Exception as e:  # changed beyond what the check can read, e.g. no source
            missing.append(f"{what}: {type(e).__name__}: {e}")
    return missing


def _check_methods() -> list[str]:
    missing = []
    # gunicorn calls these with exactly these positional arguments, and the
    # overrides take exactly those; any other parameter would be lost or required
    for name, args in (("enqueue_req", "self, conn"), ("handle", "self, conn"),
                       ("init_process", "self"), ("handle_exit", "self, sig, frame")):
        method = getattr(ThreadWorker, name, None)
        if not inspect.isfunction(method):
            missing.append(f"ThreadWorker.{name}")
            continue
        params = list(inspect.signature(method).parameters.values())
        if [p.kind for p in params] != [inspect.Parameter.POSITIONAL_OR_KEYWORD] * len(
                args.split(",")):
            missing.append(f"ThreadWorker.{name}({args}), found "
                           f"{name}{inspect.signature(method)}")
    # read while a connection is kept, to let go of it when the worker stops
    # (alive) or its master is gone (ppid)
    for attribute in ("alive", "ppid"):
        if not any(attribute in _self_attributes_set(vars(cls)["__init__"])
                   for cls in ThreadWorker.__mro__
                   if inspect.isfunction(vars(cls).get("__init__"))):
            missing.append(f"a worker attribute '{attribute}' set in __init__")
    return missing


def _check_handle_returns() -> list[str]:
    # Statically, this can only establish which values handle() may return:
    # every return statement of handle() and of the ThreadWorker methods it
    # returns the result of must give True, False, None, a bool() or `not`
    # expression, or a module-level object (the deferral sentinel, _DEFER in
    # gunicorn 27).  Such values are fixed, so a result `is True` or it is
    # handed back to gunicorn untouched.  What cannot be checked here is what
    # True means: that it is returned only after an HTTP/1 request was
    # answered on a connection that may take another, and that gunicorn's
    # finish_request() then polls the socket for the next request (the round
    # trip LingeringWorker saves).  The tests call handle() on a real
    # connection for that.
    return _unexpected_returns(ThreadWorker.handle, set())


def _unexpected_returns(func, seen) -> list[str]:
    if func in seen:
        return []
    seen.add(func)
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    if not tree.body or not isinstance(tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
        return [f"{func.__qualname__}: source is not a plain function definition"]
    problems = []
    for node in _own_returns(tree.body[0]):
        value = node.value
        if (value is None
                or isinstance(value, ast.Constant) and any(
                    value.value is v for v in (True, False, None))
                or isinstance(value, ast.UnaryOp) and isinstance(value.op, ast.Not)
                or _is_call_to_builtin_bool(value, func)
                or isinstance(value, ast.Name) and value.id in func.__globals__):
            continue
        method = _self_method_called(value)
        if method is not None:
            problems.extend(_unexpected_returns(method, seen))
            continue
        problems.append(f"{func.__qualname__}() returning `{ast.unparse(value)}`, "
                        "not True, False or a sentinel")
    return problems


def _own_returns(function: ast.AST) -> list[ast.Return]:
    """The return statements of a function, not of functions nested in it."""
    returns, stack = [], list(ast.iter_child_nodes(function))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Return):
            returns.append(node)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(node))
    return sorted(returns, key=lambda node: node.lineno)


def _is_call_to_builtin_bool(value: ast.AST, func) -> bool:
    return (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
            and value.func.id == "bool" and "bool" not in func.__globals__)


def _self_method_called(value: ast.AST):
    """The ThreadWorker method `value` calls as `self.method(...)`, if it does."""
    if (isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute)
            and isinstance(value.func.value, ast.Name) and value.func.value.id == "self"):
        method = getattr(ThreadWorker, value.func.attr, None)
        if inspect.isfunction(method):
            return method
    return None


def _self_attributes_set(func) -> set[str]:
    """Names of the `self.<name>` attributes a method assigns."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    return {target.attr for node in ast.walk(tree)
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign))
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
            and target.value.id == "self"}


def _check_conn() -> list[str]:
    missing = []
    if "parser" not in _self_attributes_set(gthread.TConn.init):
        missing.append("TConn.init() setting conn.parser")
    # Built for real, as cheaply as gunicorn builds one for a client: a
    # connected pair of local sockets, nothing read or written.  TConn.init()
    # itself is not called, since with some settings it reads from the socket
    # (an h2c preface); for HTTP/1 it makes its parser with get_parser().
    ours, peer = socket.socketpair()
    try:
        cfg = Config()
        conn = gthread.TConn(cfg, ours, None, None)
        if getattr(conn, "sock", None) is not ours:
            missing.append("TConn.sock")
        parser = http.get_parser(cfg, conn.sock, conn.client)
        buf = getattr(getattr(parser, "unreader", None), "buf", None)
        if not isinstance(buf, io.BytesIO):
            missing.append(f"{type(parser).__name__}.unreader.buf, a BytesIO of "
                           f"bytes read ahead (found {type(buf).__name__})")
    finally:
        ours.close()
        peer.close()
    return missing


class LingeringWorker(ThreadWorker):
    """gthread, a thread keeping the connection it answered while no other
    connection waits for a thread."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Every connection reaches a thread through enqueue_req(), and every
        # thread's work is one handle(): these count connections waiting for
        # a thread, and threads that hold one (answering, or waiting for its
        # next request).
        self._queued = 0
        self._held = 0
        self._counts = threading.Lock()
        self._wakeup = None  # made in the forked worker: init_process()

    def init_process(self):
        self._wakeup = Wakeup()
        super().init_process()

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        if self._wakeup is not None:
            self._wakeup.set(self.cfg.threads)  # every waiting thread lets go

    def _starved(self) -> bool:
        """Whether a connection waits that no free thread will take."""
        with self._counts:
            return self._queued > self.cfg.threads - self._held

    def enqueue_req(self, conn):
        with self._counts:
            self._queued += 1
        super().enqueue_req(conn)
        if self._starved():
            self._wakeup.set()

    def handle(self, conn):
        with self._counts:
            self._queued -= 1
            self._held += 1
        try:
            while True:
                keepalive = super().handle(conn)
                if keepalive is not True or not self.alive or self._starved():
                    return keepalive
                let_go = self._wait_for_request(conn)
                if let_go is not None:
                    return let_go
        finally:
            with self._counts:
                self._held -= 1

    def _wait_for_request(self, conn) -> bool | None:
        """None once the connection has bytes to read (its next request, or
        its close, which the next handle() sees); else what handle() returns
        without answering: True to hand the connection back to the poller
        (another connection needs this thread, or the worker stops), False
        to close it (idle as long as gunicorn keeps a connection alive)."""
        if conn.parser.unreader.buf.getvalue():
            return None  # already read ahead: the socket will not signal it
        sock = conn.sock.fileno()
        poll = select.poll()
        poll.register(sock, select.POLLIN)
        poll.register(self._wakeup.fileno(), select.POLLIN)
        deadline = time.monotonic() + self.cfg.keepalive
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready = {fd for fd, _ in poll.poll(min(left, CHECK_EVERY) * 1000)}
            if sock in ready:
                return None
            if not self.alive or self.ppid != os.getppid():
                return True  # gthread closes it as a stopping worker does
            # one wake-up byte lets one thread go; one another thread took,
            # or left from a wait that has since ended, lets none go
            if ready and self._wakeup.take() and self._starved():
                return True


class Wakeup:
    """A pipe threads wait on beside their connection: each byte written
    wakes them all, and lets one of them go."""

    def __init__(self):
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def fileno(self) -> int:
        return self._read

    def set(self, count=1):
        try:
            os.write(self._write, b"\0" * count)
        except BlockingIOError:
            pass  # full: it is readable, which is all a waiting thread needs

    def take(self) -> bool:
        """Whether this caller got a byte (another waiting thread did not)."""
        try:
            return bool(os.read(self._read, 1))
        except BlockingIOError:
            return False

    def close(self):
        os.close(self._read)
        os.close(self._write)


class PlainWorker(ThreadWorker):
    """gunicorn's gthread worker unchanged, for a gunicorn without the
    internals LingeringWorker relies on."""


def worker_class() -> type[ThreadWorker]:
    """LingeringWorker if the installed gunicorn has every internal it relies
    on, else PlainWorker and a warning naming what is missing."""
    missing = missing_internals()
    if not missing:
        return LingeringWorker
    logger.warning("gunicorn %s lacks gthread internals app/worker.py relies on: %s; "
                "the registry falls back to plain gthread workers",
                gunicorn.__version__, "; ".join(missing))
    return PlainWorker


# Decided once, at import: gunicorn's master loads the class before forking.
Worker = worker_class()
