"""Garbage collection: what storage keeps, and what it may let go.

Safe to run while instances serve and build:

- Live are the image records pulled (by tag, or one of their manifests by
  digest) within the retention, or younger than the grace period, and
  everything they reference: an index's images, an image's manifests,
  config, layers, SBOM and its artifact manifests, and the side records of
  those blobs (`layerinfo/`, `blobsources/`, `referrers/`).  Pulls mark
  what they use (builders/service.py), at most once per `MARK_EVERY`.
- What nothing live references may go once it is older than the grace
  period, which exceeds every cache that can say an object exists (the
  records and layers a process remembers for a day, signed URLs), plus a
  build (NIX_TIMEOUT) and its uploads (storage/lifecycle.py).  A build that
  reuses a stored layer marks it used (builders/layers/layerstore.py).
- Every delete is conditional on the version the listing saw: an object
  written or marked used since then survives.  Records go first, and only
  the blobs of records that went: a record a pull marked meanwhile keeps
  all it references.
- Failure verdicts, build claims and source resolutions go when they have
  expired; build logs of this machine's history when they are older than
  the retention.
"""
from __future__ import annotations

import json
import logging
import re
import time

from . import keys
from .lifecycle import CLAIMS_SECONDS, KINDS, SOURCES_SECONDS, Report, Tally, kind_of

logger = logging.getLogger(__name__)

DIGEST_RE = re.compile(rb"sha256:[0-9a-f]{64}")
class Collector:
    """One collection of `storage`.  What a record holds is the builders'
    knowledge: `held(data)` reads a stored record (lifecycle.Held, or
    TypeError or ValueError for one it cannot read), and
    `prune_tags(live_revisions, young, dry_run)` drops the kept revisions
    no live image was built from and that were not built from since
    `young`, answering their tags."""

    def __init__(self, storage, *, retention: float, grace: float, failure_ttl: float,
                 held, prune_tags=None, history=None, clock=time.time, on_judged=None,
                 on_listed=None):
        self.storage = storage
        self.retention = retention
        self.grace = grace
        self.failure_ttl = failure_ttl
        self._held = held
        self._prune_tags = prune_tags
        self.history = history
        self._clock = clock
        self._on_judged = on_judged    # called with the doomed blobs before any goes
        self._on_listed = on_listed    # called once per object listed (progress)

    def run(self, *, dry_run=False) -> Report:
        now = self._clock()
        report = Report()
        listed = {kind: self._list(kind, report) for kind in KINDS}
        blobs = {keys.blob_sha256(i.key): i for i in listed["layers"]}
        young = now - self.grace
        pulled_since = now - self.retention

        # the records: which are live, and what they reference
        images, indexes = {}, {}
        live = set()
        for info in listed["manifests"]:
            record = self._read_record(info.key)
            if record is None:
                # a record this version cannot read (a later format?) is kept,
                # with every digest it names
                live.update(DIGEST_RE.findall(self.storage.read(info.key) or b""))
            elif record.index:
                indexes[record.key] = (info, record)
            else:
                images[record.key] = (info, record)

        def pulled(info, record):
            last = max([info.used] + [blobs[d[7:]].used for d in record.manifests
                                      if d[7:] in blobs])
            return last >= pulled_since or info.used >= young

        live_images = {k for k, (i, r) in images.items() if pulled(i, r)}
        live_indexes = {k for k, (i, r) in indexes.items() if pulled(i, r)}
        for k in live_indexes:
            live_images.update(m for m in indexes[k][1].members if m in images)

        doomed_records = ([indexes[k][0] for k in indexes if k not in live_indexes]
                          + [images[k][0] for k in images if k not in live_images])
        report.doomed.extend(doomed_records)
        if not dry_run:
            for info in doomed_records:
                record_key = info.key[len("manifests/"):]
                if self._delete(info, report):
                    continue
                # pulled meanwhile: it and all it references stay
                (live_indexes if record_key in indexes else live_images).add(record_key)
                if record_key in indexes:
                    live_images.update(indexes[record_key][1].members)

        for k in live_images:
            if k in images:
                live.update(images[k][1].blobs)
        for k in live_indexes:
            live.update(indexes[k][1].blobs)
        live_hex = {(d.decode() if isinstance(d, bytes) else d)[7:] for d in live}

        # blobs nothing live references, older than the grace period
        doomed_blobs = [i for h, i in blobs.items() if h not in live_hex and i.used < young]
        report.doomed.extend(doomed_blobs)
        if self._on_judged:
            self._on_judged(doomed_blobs)
        # as if gone, in a dry run
        gone = {keys.blob_sha256(i.key) for i in doomed_blobs
                if dry_run or self._delete(i, report)}
        present = set(blobs) - gone

        # side records of blobs that are gone (or were never there), unless live
        def orphan(hex_digest):
            return hex_digest not in live_hex and hex_digest not in present

        for info in listed["blobsources"] + listed["referrers"]:
            digest = info.key.rsplit("/", 1)[-1]
            if digest.startswith("sha256:") and orphan(digest[7:]) and info.used < young:
                self._doom(info, report, dry_run)
        for info in listed["layerinfo"]:
            data = self.storage.read(info.key)
            try:
                digest = json.loads(data)["digest"] if data else None
            except (ValueError, KeyError, TypeError):
                digest = None
            if (digest is None or orphan(digest[7:])) and info.used < young:
                self._doom(info, report, dry_run)

        # records that expire
        for info in listed["failures"]:
            if info.used < now - self.failure_ttl - 60:
                self._doom(info, report, dry_run)
        for info in listed["claims"]:
            if info.used < now - CLAIMS_SECONDS:
                self._doom(info, report, dry_run)
        for info in listed["sources"]:
            if info.used < now - SOURCES_SECONDS:
                self._doom(info, report, dry_run)

        if self._prune_tags is not None:
            report.pruned_tags = self._prune_tags(
                {images[k][1].revision for k in live_images if k in images}, young, dry_run)
        if self.history is not None:
            report.logs = self.history.prune(pulled_since, dry_run=dry_run)
        self._save(report, now, dry_run)
        return report

    def _list(self, kind, report):
        tally = report.stored.setdefault(kind, Tally())
        out = []
        for info in self.storage.list(f"{kind}/"):
            out.append(info)
            tally.add(info.size)
            if self._on_listed:
                self._on_listed(info)
        return out

    def _read_record(self, key):
        try:
            return self._held(self.storage.read(key))
        except (TypeError, ValueError):
            logger.warning("%s is not a record this registry can read", key)
            return None

    def _doom(self, info, report, dry_run):
        report.doomed.append(info)
        if not dry_run:
            self._delete(info, report)

    def _delete(self, info, report) -> bool:
        if self.storage.delete_if(info.key, info.version):
            report.deleted.setdefault(kind_of(info.key), Tally()).add(info.size)
            return True
        report.survived += 1
        logger.info("%s was used while it was judged: kept", info.key)
        return False

    def _save(self, report, now, dry_run):
        """What storage holds after this run, for /metrics; and, unless it
        was a dry run, the run itself."""
        data = self.storage.read(keys.gc_state())
        try:
            state = json.loads(data) if data else {}
        except ValueError:
            state = {}
        stored = {}
        for kind, tally in report.stored.items():
            gone = report.deleted.get(kind, Tally())
            stored[kind] = {"objects": tally.objects - gone.objects,
                            "bytes": tally.bytes - gone.bytes}
        state["stored"] = stored
        state["scanned_at"] = now
        if not dry_run:
            freed = report.freed
            state["runs"] = state.get("runs", 0) + 1
            state["freed_bytes"] = state.get("freed_bytes", 0) + freed.bytes
            state["freed_objects"] = state.get("freed_objects", 0) + freed.objects
            state["last_run_at"] = now
        self.storage.put_bytes(keys.gc_state(), json.dumps(
            state, sort_keys=True, separators=(",", ":")).encode(), "application/json")
