"""Logging: one line per event, text or JSON, each with its request's id."""
from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import threading
import time

from gunicorn.glogging import Logger as GunicornLogger

from .proxy import Proxies

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

# What we accept as a caller's X-Request-ID; anything else gets a new id.
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def new_request_id(header: str | None) -> str:
    if header and REQUEST_ID_RE.fullmatch(header):
        return header
    return os.urandom(16).hex()  # as random as uuid4().hex, without building a UUID


class RequestIdFilter(logging.Filter):
    def filter(self, record):
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record):
        event = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(process)d %(levelname)s [%(request_id)s] %(name)s: %(message)s"


def configure(level="INFO", fmt="text"):
    """Route every logger of the app to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_registry", False):
            root.removeHandler(old)
    handler._registry = True
    root.addHandler(handler)
    root.setLevel(level)


class AccessLogger(GunicornLogger):
    """gunicorn's access log as one event per request, with the client by
    app/proxy.py's rule (from gunicorn's forwarded_allow_ips, which
    gunicorn.conf.py sets to FORWARDED_ALLOW_IPS) and the request id.

    A line is written straight to the streams of gunicorn's own access log
    handler (`-` or a file) when that is all the access log has: logging's
    record, caller lookup and handler chain cost more than the rest of the
    line, about a twentieth of a small blob request behind nginx.  Any other
    set-up (syslog, a logging configuration) gets the line through logging.
    """

    json_format = False
    # lines written `later` wait at most this long, or until this many
    # characters wait (see access_line)
    LATER_SECONDS = 0.1
    LATER_CHARS = 64 << 10

    def setup(self, cfg):
        super().setup(cfg)
        self._proxies = Proxies(",".join(cfg.forwarded_allow_ips))
        self._streams = _message_only_handlers(self.access_log)
        self._later: list[str] = []
        self._later_chars = 0
        self._later_lock = threading.Lock()

    def access(self, resp, req, environ, request_time):
        if not self.access_log_enabled:
            return
        rid = next((v for k, v in resp.headers if k.lower() == "x-request-id"), "-")
        client = self._proxies.client_of(environ) or "-"
        user = environ.get("REMOTE_USER") or "-"
        method = environ.get("REQUEST_METHOD")
        path = environ.get("RAW_URI") or environ.get("PATH_INFO")
        # gunicorn's own answers to requests that failed (handle_error) set
        # only the status line
        status = getattr(resp, "status_code", None) or _status_code(resp.status)
        self.access_line(client, user, method, path, status, getattr(resp, "sent", None),
                         round(request_time.total_seconds() * 1000, 1),
                         environ.get("HTTP_USER_AGENT", ""), rid)

    def access_line(self, client, user, method, path, status, sent, duration_ms, user_agent,
                    rid, later=False):
        """Write an access line of these fields (app/http/replay.py writes
        those of the answers it gives, which have no WSGI environ).

        `later`: the line may wait, with others, for the next write_later()
        (which its caller makes at least every LATER_SECONDS), so that a
        worker answering tens of thousands of requests a second makes one
        write for many lines: each write lets another of its threads take
        the interpreter, and that handover costs more than the write.
        Only where lines go straight to their streams; elsewhere (syslog,
        a logging configuration) the line is written at once."""
        if not self.access_log_enabled:
            return
        if self.json_format:
            line = json.dumps({
                "client": client, "user": user, "method": method, "path": path,
                "status": status, "bytes": sent, "duration_ms": duration_ms,
                "user_agent": user_agent, "request_id": rid,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "logger": "access",
            }, ensure_ascii=False)
        else:
            line = (f'{client} {user} "{method} {path}" {status} {sent} '
                    f'{duration_ms}ms [{rid}] "{user_agent}"')
        if later and self._streams is not None:
            with self._later_lock:
                self._later.append(line)
                self._later_chars += len(line)
                if self._later_chars < self.LATER_CHARS:
                    return
            self.write_later()
            return
        self._emit(line)

    def write_later(self) -> None:
        """Write the lines that wait (access_line's `later`), in their order."""
        with self._later_lock:
            lines, self._later, self._later_chars = self._later, [], 0
        if lines:
            self._emit(*lines)

    def _emit(self, *lines) -> None:
        """Write the lines straight to the streams, else through logging."""
        try:
            if self._streams is None or not self._write(*lines):
                for line in lines:
                    self.access_log.info(line)
        except Exception:
            self.exception("cannot write the access log")

    def _write(self, *lines) -> bool:
        """Write the lines to each handler's stream, as its emit() would;
        False, having written nothing, if the log is off or a stream closed."""
        if not self.access_log.isEnabledFor(logging.INFO):
            return True  # logging.disable(): nothing is written either way
        streams = self._streams
        if len(streams) == 1:  # `-` or a file: each request's line, so the short way
            handler = streams[0]
            end = handler.terminator
            with handler.lock:
                if handler.stream is None:
                    return False
                handler.stream.write(end.join(lines) + end)
                handler.stream.flush()
            return True
        if any(h.stream is None for h in streams):
            return False
        for handler in streams:
            end = handler.terminator
            with handler.lock:  # also held while gunicorn reopens the file (USR1)
                handler.stream.write(end.join(lines) + end)
                handler.stream.flush()
        return True


def _status_code(status) -> int | str:
    """The code of a status line such as `500 Internal Server Error`."""
    code = str(status or "").split(" ", 1)[0]
    return int(code) if code.isdigit() else code or "-"


def _message_only_handlers(log) -> list[logging.StreamHandler] | None:
    """The logger's handlers, if each only writes the bare message to a
    stream; else None."""
    if not log.handlers or log.filters or log.propagate:
        return None
    for handler in log.handlers:
        formatter = handler.formatter
        if (type(handler) not in (logging.StreamHandler, logging.FileHandler)
                or handler.filters or handler.level > logging.INFO
                or formatter is not None and (type(formatter) is not logging.Formatter
                                              or formatter._fmt != "%(message)s")):
            return None
    return list(log.handlers)


class JsonAccessLogger(AccessLogger):
    """As AccessLogger, and gunicorn's own messages as JSON events too, so
    every line the server writes is JSON."""

    json_format = True

    def setup(self, cfg):
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(JsonFormatter())
        for handler in self.access_log.handlers:
            handler.setFormatter(logging.Formatter("%(message)s"))
