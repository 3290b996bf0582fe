"""One build per image across instances: a claim in storage, with a lease.

Instances that share storage (a bucket) claim an image before they build
it: a small record under `claims/<cache key>`, written only if there is
none (GCS: `if_generation_match=0`; the filesystem: under a lock of the
key), naming the instance and when its lease ends.  The builder renews the
lease while it builds.  An instance that dies stops renewing, and once its
lease has ended another instance takes the claim over, with a write
conditional on the version of the claim it saw, so of several takers one
wins.  The others wait for the image's record or its failure.

A claim also names the process that holds it: its machine (as processes
see it, builders/process.py), pid and start time.  On that machine a
claim whose process is gone (a worker killed mid-build) is taken over at
once rather than after its lease; across machines the lease is the rule.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import socket
import threading
import time
import uuid

from storage import keys
from .. import process
from .. import digests

logger = logging.getLogger(__name__)

LEASE_SECONDS = 60


class Claim:
    """A claim this process holds on one image."""

    def __init__(self, claims: "Claims", key: str, version: str):
        self.claims = claims
        self.key = key
        self.version = version

    def renew(self) -> bool:
        """Push the lease's end out again; False when the claim was lost
        (this process was too slow to renew and another took it over)."""
        version = self.claims.storage.put_if(keys.claim(self.key), self.claims.record(),
                                             version=self.version)
        if version is None:
            return False
        self.version = version
        return True

    def release(self) -> None:
        """Free the claim for the next build (after a failure, say)."""
        done = json.dumps({"owner": self.claims.owner, "released": True}).encode()
        if not self.claims.storage.put_if(keys.claim(self.key), done, version=self.version):
            logger.warning("the claim on %s was taken over before its build ended", self.key[:12])

    @contextlib.contextmanager
    def kept(self):
        """Renew the lease in the background while the block runs."""
        stop = threading.Event()

        def renew():
            while not stop.wait(self.claims.lease / 3):
                try:
                    if not self.renew():
                        logger.warning("lost the claim on %s to another instance", self.key[:12])
                        return
                except Exception as e:  # storage trouble: try again at the next turn
                    logger.warning("could not renew the claim on %s: %s", self.key[:12], e)

        thread = threading.Thread(target=contextvars.copy_context().run, args=(renew,),
                                  name=f"claim-{self.key[:8]}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()


class Claims:
    def __init__(self, storage, *, lease: float = LEASE_SECONDS, owner: str | None = None,
                 clock=time.time):
        self.storage = storage
        self.lease = lease
        self.owner = owner or f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self._clock = clock
        self._machine = process.machine()

    def record(self) -> bytes:
        pid = os.getpid()
        return digests.canonical({"owner": self.owner, "expires": self._clock() + self.lease,
                                   "machine": self._machine, "pid": pid,
                                   "started": process.start_time(pid)})

    def _gone(self, held: dict) -> bool:
        """Whether the process holding a claim is known to be gone: it ran
        on this machine, and no process of its pid and start time is left."""
        if self._machine is None or held.get("machine") != self._machine:
            return False
        started = process.start_time(held.get("pid") or 0)
        if started is None:
            return True
        # the pid is another process's now (pids are reused)
        return held.get("started") is not None and started != held["started"]

    def acquire(self, key: str) -> Claim | None:
        """The claim on the image `key`, or None while another instance holds it."""
        current = self.storage.read_versioned(keys.claim(key))
        version = None
        if current is not None:
            data, version = current
            held = json.loads(data)
            if not held.get("released") and held["expires"] > self._clock():
                if not self._gone(held):
                    return None
                logger.warning("taking over the claim of %s on %s: its process (pid %s on "
                               "this machine) is gone", held["owner"], key[:12], held["pid"])
            elif not held.get("released"):
                logger.warning("taking over the claim of %s on %s: its lease ended",
                               held["owner"], key[:12])
        mine = self.storage.put_if(keys.claim(key), self.record(), version=version)
        if mine is None:
            return None  # another instance was quicker
        return Claim(self, key, mine)
