"""The gthread internals app/http/worker.py relies on, checked against the
installed gunicorn.

LingeringWorker overrides and reads parts of gunicorn's gthread worker that
are not a public API: `ThreadWorker.enqueue_req(conn)` queues a connection
to the pool, `ThreadWorker.handle(conn)` answers one request and returns
True exactly when the connection may be kept alive, `init_process()` runs in
the forked worker, `handle_exit(sig, frame)` on SIGTERM, the worker's
`alive` and `ppid`, and a connection's `sock` and `parser.unreader.buf`
(the bytes already read ahead), and what app/http/http1.py and
app/http/http1_response.py take from gunicorn to answer plain requests as gthread
would (see _check_plain).
missing_internals() says which of them the
installed gunicorn lacks or has changed, so that app/http/worker.py can fall back
to plain gthread workers, and tests/app/test_worker_internals.py fails
before such an upgrade is deployed.
"""
from __future__ import annotations

import ast
import inspect
import io
import socket
import textwrap

from gunicorn import http
from gunicorn.config import Config
from gunicorn.workers import gthread
from gunicorn.workers.gthread import ThreadWorker


def missing_internals() -> list[str]:
    """What the installed gunicorn lacks of the internals LingeringWorker uses.

    One description per missing or changed internal; empty when all are
    there.  Some things cannot be checked without running a worker (see
    _check_handle_returns); tests/app/test_worker_internals.py runs one.
    """
    missing = []
    for what, check in (
            ("ThreadWorker.enqueue_req/handle/init_process/handle_exit, alive, ppid",
             _check_methods),
            ("what ThreadWorker.handle() returns", _check_handle_returns),
            ("a connection's sock and parser.unreader.buf", _check_conn),
            ("what app/http/http1*.py read and call of gunicorn", _check_plain)):
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
                       ("init_process", "self"), ("handle_exit", "self, sig, frame"),
                       ("accept", "self, listener"), ("set_accept_enabled", "self, enabled"),
                       ("wait_for_and_dispatch_events", "self, timeout")):
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
    attributes = _worker_attributes()
    # and to spread new connections over the workers (app/http/balance.py)
    missing += [f"a worker attribute '{a}' set in __init__"
                for a in ("alive", "ppid", "age", "nr_conns", "_accepting", "worker_connections")
                if a not in attributes]
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


def _worker_attributes() -> set[str]:
    """The `self.<name>` attributes the __init__ of ThreadWorker or of a
    class it derives from assigns."""
    return {a for cls in ThreadWorker.__mro__ if inspect.isfunction(vars(cls).get("__init__"))
            for a in _self_attributes_set(vars(cls)["__init__"])}


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


def _check_plain() -> list[str]:
    """What app/http/http1.py and app/http/http1_response.py rely on: a connection's
    client, server address, HTTP/2 flag and parser; the unreader's
    take_buffered() and unread(); the worker's request count, its
    keep-alive bookkeeping, load_wsgi() and handle_error(); and gunicorn's
    own response checks, environ base and clamped limits, so that plain
    requests are held to gunicorn's rules."""
    from gunicorn import util
    from gunicorn.http import message, wsgi
    from gunicorn.workers import base

    missing = []
    conn_attributes = _self_attributes_set(gthread.TConn.__init__)
    missing += [f"TConn.{a}" for a in ("client", "server", "is_http2", "parser")
                if a not in conn_attributes]
    for name in ("take_buffered", "unread"):
        if not inspect.isfunction(getattr(http.unreader.Unreader, name, None)):
            missing.append(f"Unreader.{name}()")
    worker_attributes = _worker_attributes()
    missing += [f"a worker attribute '{a}' set in __init__"
                for a in ("nr", "max_requests", "keepalived_conns", "max_keepalived")
                if a not in worker_attributes]
    for name, args in (("load_wsgi", ["self"]),
                       ("handle_error", ["self", "req", "client", "addr", "exc"])):
        method = getattr(base.Worker, name, None)
        if not inspect.isfunction(method) or list(inspect.signature(method).parameters) != args:
            missing.append(f"Worker.{name}({', '.join(args)})")
    # app/http/http1.py reads the limits off a request gunicorn parsed (limits())
    probe = message.Request(Config(), http.unreader.IterUnreader([b"GET / HTTP/1.1\r\n\r\n"]),
                            ("127.0.0.1", 0))
    missing += [f"gunicorn.http.message.Request.{a}, an int" for a in (
        "limit_request_line", "limit_request_fields", "limit_request_field_size")
        if not isinstance(getattr(probe, a, None), int)]
    for module, names in ((wsgi, ("STATUS_RE", "TOKEN_RE", "HEADER_VALUE_RE", "SERVER",
                                  "base_environ", "InvalidResponseHeader",
                                  "InvalidResponseHeaderName")),
                          (util, ("http_date", "is_hoppish", "unquote_to_wsgi_str"))):
        missing += [f"{module.__name__}.{n}" for n in names if not hasattr(module, n)]
    return missing
