"""Answers given again: the requests of a cached pull, answered without the app.

A pull repeats itself: the same client sends the same head (request line and
headers, byte for byte) for the same manifest and blobs on every pull, and
the answer differs only in its Date and X-Request-ID.  Running the app for
each costs several times what sending the answer does (docs/benchmarks.md,
"Whole pulls").  So when the app says an answer may be given again
(`app/scope.py`'s REPLAY, set by app/registry.py for a manifest or a whole
blob that needed no credentials), the worker keeps it under the request's
head, and a later request on a kept-alive connection with the very same
head gets it again, with a new request id and the current date, from here.

Nothing is lost by it:

- a blob is only given again while storage says it is the file whose digest
  was checked (unchanged inode, size and mtime: one stat, Storage.unchanged);
  a blob changed, cut short, set aside or collected goes to the app, which
  checks it, remakes it or says it is unknown;
- a manifest by tag is given again for two seconds at most (tags move, as
  the caching nginx in front keeps it, app/front.py), one by digest for as
  long as nginx may keep it, so that pulls still mark it used for garbage
  collection;
- each answer is in the access log (with the client by app/proxy.py's
  rule; its lines written a tenth of a second's worth at a time, see
  app/logs.py's `later`) and in the request and byte metrics, added a
  second's worth at a time as nginx's reports are (app/front_reports.py's Tally);
- requests with credentials, with an X-Request-ID of their own, ranges,
  conditions that were met (304) and errors are never kept: they always
  reach the app.

A worker keeps at most MAX_ENTRIES answers, and their bodies up to
MAX_BODY_BYTES in all (a blob over BODY_MAX is read from storage again on
each answer, as the app streams it); the oldest go first.
"""
from __future__ import annotations

import collections
import functools
import os
import random
import threading
import time

from .http1_response import JOIN_BELOW, date_bytes

MAX_ENTRIES = 4096
BODY_MAX = 2 << 20
MAX_BODY_BYTES = 32 << 20
CHUNK = 1 << 20
FLUSH_SECONDS = 1.0


class Entry:
    """One answer, ready to be given again."""

    __slots__ = ("expires", "replayable", "pre", "mid", "post", "body", "size", "report", "method",
                 "path", "forwarded_for", "user_agent", "weight")

    def __init__(self, expires, replayable, pre, mid, post, body, size, report, method, path,
                 forwarded_for, user_agent):
        self.expires = expires
        self.replayable = replayable
        # the head: pre, the date, mid, the request id, post
        self.pre, self.mid, self.post = pre, mid, post
        self.body = body                 # bytes, or None: read from storage
        self.size = size                 # the body's length (0 for a HEAD)
        self.report = report
        self.method, self.path = method, path
        self.forwarded_for, self.user_agent = forwarded_for, user_agent
        self.weight = len(body) if body else 0


class Replays:
    """A worker's answers given again (see the module)."""

    def __init__(self, log, proxies, *, clock=time.monotonic):
        # in the worker: the metrics (app/front_reports.py's Tally) are made there
        from .. import front_reports, metrics
        self._front, self._metrics = front_reports, metrics
        self.given: collections.Counter = collections.Counter()  # answers given again, by kind
        self.log = log
        self._log_later = hasattr(log, "write_later")
        self.proxies = proxies
        self.clock = clock
        self.entries: dict[bytes, Entry] = {}
        self.weight = 0
        self.tally = front_reports.Tally()
        self._lock = threading.Lock()   # entries' changes and the tally
        self._flusher = None
        self._stop = threading.Event()
        # request ids as random as app/logs.py's, without a system call
        # each: seeded here, in the worker, so that no two workers share one
        self._ids = functools.partial(random.Random(os.urandom(32)).getrandbits, 128)

    @staticmethod
    def usable(worker) -> bool:
        """Whether the worker's set-up lets an answer skip the app: gunicorn's
        own request hooks (a custom one must see every request), and the
        registry's access log, whose lines these answers write."""
        cfg = worker.cfg
        return (hasattr(getattr(worker, "log", None), "access_line")
                and cfg.settings["pre_request"].value is cfg.settings["pre_request"].default
                and cfg.settings["post_request"].value is cfg.settings["post_request"].default)

    # keeping

    def keep(self, head: bytes, environ, resp, chunks, replayable) -> None:
        """Keep the app's answer `resp` to the request `head`, if it may be
        given again: a whole 200 to a request without credentials or an id
        of its own.  `chunks` are the body's bytes as sent (None if not
        kept: a big blob, read from storage when given again)."""
        if (resp.status_code != 200 or resp.should_close() or resp.chunked
                or "HTTP_X_REQUEST_ID" in environ or "REMOTE_USER" in environ
                or "HTTP_AUTHORIZATION" in environ):
            return
        names = [name.lower() for name, _ in resp.headers]
        if "x-request-id" not in names:
            return
        at = names.index("x-request-id")
        lines = [f"{k}: {v}\r\n" for k, v in resp.headers]
        pre = (f"HTTP/1.1 {resp.status}\r\nServer: {_server()}\r\nDate: ").encode("latin-1")
        mid = ("\r\nConnection: keep-alive\r\n" + "".join(lines[:at])
               + f"{resp.headers[at][0]}: ").encode("latin-1")
        post = ("\r\n" + "".join(lines[at + 1:]) + "\r\n").encode("latin-1")
        method = environ["REQUEST_METHOD"]
        if method == "HEAD":
            body, size = b"", 0
        else:
            size = resp.response_length
            if size is None or resp.sent != size:
                return
            body = b"".join(chunks) if chunks is not None else None
            if body is not None and len(body) != size:
                return
        entry = Entry(self.clock() + replayable.seconds, replayable, pre, mid, post, body, size,
                      self._front.Report(replayable.kind, method, "200", size), method,
                      environ.get("RAW_URI", ""), environ.get("HTTP_X_FORWARDED_FOR"),
                      environ.get("HTTP_USER_AGENT", ""))
        with self._lock:
            old = self.entries.pop(head, None)
            if old is not None:
                self.weight -= old.weight
            while self.entries and (len(self.entries) >= MAX_ENTRIES
                                    or self.weight + entry.weight > MAX_BODY_BYTES):
                self.weight -= self.entries.pop(next(iter(self.entries))).weight
            if entry.weight <= MAX_BODY_BYTES:
                self.entries[head] = entry
                self.weight += entry.weight
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_every, name="replay-tally",
                                                 daemon=True)
                self._flusher.start()

    def drop(self, head: bytes, entry: Entry) -> None:
        with self._lock:
            if self.entries.get(head) is entry:
                del self.entries[head]
                self.weight -= entry.weight

    # giving again

    def answer(self, sock, head: bytes, peer: str) -> bool:
        """Give the answer kept for `head` again on `sock`: False, having
        sent nothing, if there is none or it may no longer be given."""
        entry = self.entries.get(head)
        if entry is None:
            return False
        start = time.perf_counter()
        replayable = entry.replayable
        if self.clock() >= entry.expires or not replayable.still():
            self.drop(head, entry)
            return False
        body = entry.body
        f = None
        if body is None:
            f = replayable.open()
            if f is None:
                self.drop(head, entry)
                return False
        rid = b"%032x" % self._ids()
        out = b"".join((entry.pre, date_bytes(), entry.mid, rid, entry.post))
        sent = [0]
        try:
            if f is None:
                if len(body) < JOIN_BELOW:
                    sock.sendall(out + body)
                else:
                    sock.sendall(out)
                    sock.sendall(body)
                sent[0] = len(body)
            else:
                with f:
                    sock.sendall(out)
                    _stream(sock, f, entry.size, sent)
        finally:
            # counted and logged as the app's answers are, sent whole or not
            self._count(entry, sent[0])
            self.log.access_line(
                self.proxies.client(peer, entry.forwarded_for) or "-", "-", entry.method,
                entry.path, 200, sent[0], round((time.perf_counter() - start) * 1000, 1),
                entry.user_agent, rid.decode(), later=self._log_later)
        if sent[0] != entry.size:
            raise ConnectionError("the blob in storage ended before its length")
        return True

    def _count(self, entry: Entry, sent: int) -> None:
        report = entry.report
        if sent != report.size:
            report = report._replace(size=sent)
        with self._lock:
            self.tally.add(report)
            self.given[report.kind] += 1

    def flush(self) -> None:
        with self._lock:
            if self.tally.pending:
                self.tally.flush()
                for kind, n in self.given.items():
                    self._metrics.REPLAYED.labels(kind).inc(n)
                self.given.clear()

    def _flush_every(self) -> None:
        every = self.log.LATER_SECONDS if self._log_later else FLUSH_SECONDS
        flushed = self.clock()
        while not self._stop.wait(every):
            self._write_log()
            if self.clock() - flushed >= FLUSH_SECONDS:
                self.flush()
                flushed = self.clock()

    def _write_log(self) -> None:
        if self._log_later:
            self.log.write_later()

    def stop(self) -> None:
        self._stop.set()
        self._write_log()
        self.flush()


def _stream(sock, f, size, sent) -> None:
    """Send the file's `size` bytes, counting them in sent[0] as they go."""
    while sent[0] < size:
        chunk = f.read(min(CHUNK, size - sent[0]))
        if not chunk:
            break
        sock.sendall(chunk)
        sent[0] += len(chunk)


def _server() -> str:
    from gunicorn.http import wsgi
    return wsgi.SERVER
