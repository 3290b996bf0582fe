"""What was built, when, and how it went: the web page's view of builds.

A small SQLite database shared by the processes of one machine (WAL mode),
plus one Nix log file per build that the build page reads while it grows.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass

from storage import filelock
from storage.lifecycle import Tally

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS builds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image TEXT NOT NULL,        -- canonical: system and sorted packages
    tag TEXT NOT NULL,
    asked TEXT,                 -- the name as the client wrote it (shell/hello)
    key TEXT NOT NULL,          -- the manifest cache key
    status TEXT NOT NULL,       -- building | built | failed | timeout | interrupted
    phase TEXT,                 -- what a building job is doing (builders/jobs/jobs.py)
    started REAL NOT NULL,
    finished REAL,
    code TEXT,
    message TEXT,
    closure_size INTEGER,
    layers TEXT                 -- JSON [{digest, size, paths}]
);
CREATE INDEX IF NOT EXISTS builds_image ON builds (image, tag, id);
CREATE INDEX IF NOT EXISTS builds_status ON builds (status, id);
CREATE TABLE IF NOT EXISTS layer_use (
    digest TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (digest, key)
);
"""

# What a build page shows of a log, and what it keeps of a finished one.
LOG_TAIL_BYTES = 64 * 1024


@dataclass
class Build:
    id: int
    image: str
    tag: str
    key: str
    status: str
    started: float
    finished: float | None
    code: str | None
    message: str | None
    closure_size: int | None
    layers: list | None
    log_path: str
    phase: str | None = None
    asked: str | None = None


class BuildHistory:
    def __init__(self, root):
        self.root = root
        self.logs = os.path.join(root, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.path = os.path.join(root, "builds.sqlite")
        self._local = threading.local()
        # Workers start together; switching to WAL and creating the schema
        # take the database's write lock and may fail at once instead of
        # waiting, so one process at a time does it.  WAL mode then stays
        # with the file.
        with filelock.acquire(os.path.join(root, "init.lock")):
            self._init(self._db())

    @staticmethod
    def _init(db, patience=30.0):
        # A worker restarted beside busy ones may still meet their locks:
        # SQLite answers a journal-mode change with "locked" at once, so
        # wait here instead.
        deadline = time.monotonic() + patience
        while True:
            try:
                if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)
                columns = {row[1] for row in db.execute("PRAGMA table_info(builds)")}
                if "phase" not in columns:  # a history from before builds had phases
                    db.execute("ALTER TABLE builds ADD COLUMN phase TEXT")
                if "asked" not in columns:  # from before it kept the name as asked
                    db.execute("ALTER TABLE builds ADD COLUMN asked TEXT")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _db(self) -> sqlite3.Connection:
        # one connection per thread: sqlite3 connections are not shared
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            self._local.db = db
        return db

    def log_path(self, build_id) -> str:
        return os.path.join(self.logs, f"{build_id}.log")

    def _row(self, row) -> Build | None:
        if row is None:
            return None
        d = dict(row)
        d["layers"] = json.loads(d["layers"]) if d["layers"] else None
        return Build(**d, log_path=self.log_path(d["id"]))

    def start(self, image, tag, key, asked=None) -> Build:
        """A build of `image` (canonical) begins, pulled as `asked` (the
        name as the client wrote it) and `tag`."""
        db = self._db()
        cur = db.execute("INSERT INTO builds (image, tag, asked, key, status, started) "
                         "VALUES (?, ?, ?, ?, 'building', ?)",
                         (image, tag, asked, key, time.time()))
        # a build a killed worker left 'building' is not building any more
        db.execute("UPDATE builds SET status='failed', message='the build was interrupted', "
                   "finished=? WHERE image=? AND tag=? AND status='building' AND id<?",
                   (time.time(), image, tag, cur.lastrowid))
        return self.get(cur.lastrowid)

    def built(self, build: Build, *, closure_size, layers, key):
        db = self._db()
        db.execute("UPDATE builds SET status='built', finished=?, closure_size=?, layers=? "
                   "WHERE id=?", (time.time(), closure_size, json.dumps(layers), build.id))
        db.executemany("INSERT OR IGNORE INTO layer_use (digest, key) VALUES (?, ?)",
                       [(l["digest"], key) for l in layers])

    def phase(self, build: Build, phase: str):
        self._db().execute("UPDATE builds SET phase=? WHERE id=?", (phase, build.id))

    def failed(self, build: Build, *, status, code, message):
        self._db().execute("UPDATE builds SET status=?, finished=?, code=?, message=? WHERE id=?",
                           (status, time.time(), code, message, build.id))

    def get(self, build_id) -> Build | None:
        return self._row(self._db().execute("SELECT * FROM builds WHERE id=?", (build_id,)).fetchone())

    def latest(self, image, tag) -> Build | None:
        return self._row(self._db().execute(
            "SELECT * FROM builds WHERE image=? AND tag=? ORDER BY id DESC LIMIT 1",
            (image, tag)).fetchone())

    def recent(self, limit=20, *, failed=False) -> list[Build]:
        """The latest builds (those that failed, with `failed`), but for
        names that were no image (unknown packages, a typo): pages list
        builds, not what anyone typed."""
        where = "WHERE (code IS NULL OR code NOT IN ('PackagesNotFound', 'InvalidImage'))"
        if failed:
            where += " AND status IN ('failed', 'timeout', 'interrupted')"
        rows = self._db().execute(f"SELECT * FROM builds {where} ORDER BY id DESC LIMIT ?",
                                  (limit,)).fetchall()
        return [self._row(r) for r in rows]

    def sharing(self, digests) -> dict[str, int]:
        """How many images use each layer."""
        if not digests:
            return {}
        marks = ",".join("?" * len(digests))
        rows = self._db().execute(
            f"SELECT digest, COUNT(*) FROM layer_use WHERE digest IN ({marks}) GROUP BY digest",
            list(digests)).fetchall()
        return {d: n for d, n in rows}

    def prune(self, before: float, *, dry_run=False):
        """Forget builds that started before `before`, and remove their logs;
        a Tally (storage/lifecycle.py) of the logs."""
        db = self._db()
        rows = db.execute("SELECT id FROM builds WHERE started < ? AND status != 'building'",
                          (before,)).fetchall()
        tally = Tally()
        for (build_id,) in rows:
            path = self.log_path(build_id)
            try:
                size = os.path.getsize(path)
            except FileNotFoundError:
                continue
            tally.add(size)
            if not dry_run:
                os.unlink(path)
        if not dry_run and rows:
            db.execute("DELETE FROM builds WHERE started < ? AND status != 'building'", (before,))
        return tally

    def log_tail(self, build: Build, limit=LOG_TAIL_BYTES) -> str:
        try:
            with open(build.log_path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - limit))
                text = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""
        if size > limit:
            text = "…" + text.split("\n", 1)[-1]
        return text
