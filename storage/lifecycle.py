"""How long what is stored lives: the garbage collection's policy
(storage/gc.py), and what it tells of a run.

An unreferenced object may go once it is older than every cache that can
say it exists, a build and its uploads; a pull marks what it uses at most
once per MARK_EVERY; small records of some kinds expire.  What a stored
record keeps alive is the builders' knowledge, handed to a collection as
`Held` values.
"""
from __future__ import annotations

from dataclasses import dataclass, field

DAY = 24 * 3600
# How long the caches that can say an object exists keep their word: image
# records and seen layers in each process (builders/service.py,
# builders/layers/layerstore.py) for a day, signed URLs for minutes.
CACHES_SECONDS = DAY
UPLOAD_SECONDS = 300
# A pull marks a record (or a manifest it got by digest) at most this often.
MARK_EVERY = DAY
# Expired small records, by kind: how long after their last write they go.
SOURCES_SECONDS = 7 * DAY
CLAIMS_SECONDS = DAY
KINDS = ("manifests", "layers", "layerinfo", "blobsources", "referrers", "failures", "claims",
         "sources", "state")


@dataclass(frozen=True)
class Held:
    """What one stored record keeps alive: an image's record, or an index's
    (`index`), whose `members` are the keys of its images' records."""

    key: str
    index: bool
    members: tuple[str, ...]      # the records an index lists
    manifests: tuple[str, ...]    # digests of the manifests it serves (a pull marks them)
    blobs: frozenset[str]         # every blob it needs, its manifests included
    revision: str | None = None   # the revision an image was built from


def grace_seconds(nix_timeout: float) -> float:
    """How old an unreferenced object must be before it may go."""
    return CACHES_SECONDS + nix_timeout + UPLOAD_SECONDS + 3600


def mark_every(retention: float) -> float:
    """How often a pull marks what it uses: once a day, or more often when
    the retention is short, so that nothing pulled is ever collected."""
    return min(MARK_EVERY, retention / 4)


@dataclass
class Tally:
    """How many objects, of how many bytes."""

    objects: int = 0
    bytes: int = 0

    def add(self, size):
        self.objects += 1
        self.bytes += size


@dataclass
class Report:
    """What a collection found and did."""

    stored: dict[str, Tally] = field(default_factory=dict)   # by kind, before
    doomed: list = field(default_factory=list)                # ObjectInfo judged garbage
    deleted: dict[str, Tally] = field(default_factory=dict)  # by kind
    survived: int = 0       # judged garbage, but used or written meanwhile
    logs: Tally = field(default_factory=Tally)               # build logs of this machine
    pruned_tags: list = field(default_factory=list)          # folder revisions no longer tags

    @property
    def freed(self) -> Tally:
        return total(self.deleted.values())

    def judged(self) -> dict[str, Tally]:
        """What was judged garbage, by kind (what a dry run would delete)."""
        by_kind = {}
        for info in self.doomed:
            by_kind.setdefault(kind_of(info.key), Tally()).add(info.size)
        return by_kind


def total(tallies) -> Tally:
    out = Tally()
    for t in tallies:
        out.objects += t.objects
        out.bytes += t.bytes
    return out


def kind_of(key: str) -> str:
    return key.split("/", 1)[0]
