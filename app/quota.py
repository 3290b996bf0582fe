"""How many new builds one client may start: per hour, and at once
(NIXERY_CLIENT_BUILDS).  A client is its user when authenticated, else its
address (IPv6 addresses by their /64: one machine has a whole one).

Only builds count.  A pull of an image built already never reaches here,
and one that joins a build someone else started does not either: a
reservation is taken only when a pull starts a new job, charged to the
hour only if that job really builds (not if it finds the image another
instance stored), and given back when the job ends.

The counts are kept in a file on this machine (under NIXERY_STATE_PATH),
so all its worker processes share them; each machine counts its own.
Behind a load balancer spreading one client over N instances, a client
may start up to N times the limits.
"""
from __future__ import annotations

import functools
import ipaddress
import json
import os
import time
import uuid

from builders.errors import QuotaExceeded
from builders.words import counted
from storage import filelock

HOUR = 3600


@functools.lru_cache(maxsize=4096)
def client_key(user: str | None, address: str | None) -> str:
    """Who a request counts against: `user:<name>`, or its address, with
    IPv6 grouped by /64.  Asked on every pull by tag, cached ones included,
    by the same few clients: parsed once each."""
    if user:
        return f"user:{user}"
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return f"address:{address or 'unknown'}"
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return f"address:{ip.ipv4_mapped}"
        return f"address:{ipaddress.ip_network(f'{ip}/64', strict=False)}"
    return f"address:{ip}"


class Reservation:
    def __init__(self, quota: "BuildQuota", client: str, rid: str):
        self.quota = quota
        self.client = client
        self.rid = rid
        self._released = False

    def charge(self) -> None:
        """The job builds: it counts in the client's hour."""
        self.quota._update(self.client, lambda entry, now: _charge(entry, self.rid, now))

    def release(self) -> None:
        """The job ended: it no longer counts as running."""
        if not self._released:
            self._released = True
            self.quota._update(self.client, lambda entry, now: entry["running"].pop(self.rid, None))


def _charge(entry, rid, now):
    running = entry["running"].get(rid)
    if running is not None and not running["charged"]:
        running["charged"] = True
        entry["hour"].append(now)


class BuildQuota:
    def __init__(self, path: str, *, per_hour: int, at_once: int, hold_seconds: float,
                 clock=time.time):
        self.path = path
        self.per_hour = per_hour
        self.at_once = at_once
        self.hold_seconds = hold_seconds  # a reservation a dead process left ends then
        self._clock = clock
        os.makedirs(os.path.dirname(path), exist_ok=True)

    def reserve(self, client: str) -> Reservation:
        """Room for one more build of `client`, or QuotaExceeded saying which
        limit and when it frees."""
        rid = uuid.uuid4().hex

        def take(entry, now):
            running = entry["running"]
            if len(running) >= self.at_once:
                verb = "is" if len(running) == 1 else "are"
                raise QuotaExceeded(
                    f"{_who(client)} already started {counted(len(running), 'build')} that "
                    f"{verb} not done, the most one client may have at once "
                    "(NIXERY_CLIENT_BUILDS); one frees when a build ends", retry_after=30)
            uncharged = sum(1 for r in running.values() if not r["charged"])
            if len(entry["hour"]) + uncharged >= self.per_hour:
                frees = int(min(entry["hour"] or [now]) + HOUR - now) + 1
                raise QuotaExceeded(
                    f"{_who(client)} started {counted(len(entry['hour']), 'build')} in the "
                    f"last hour, the most one client may (NIXERY_CLIENT_BUILDS); the next may start in "
                    f"{_minutes(frees)}", retry_after=max(frees, 1))
            running[rid] = {"charged": False, "until": now + self.hold_seconds}
        self._update(client, take)
        return Reservation(self, client, rid)

    def _update(self, client, change):
        with filelock.acquire(self.path + ".lock"):
            try:
                with open(self.path) as f:
                    state = json.load(f)
            except (FileNotFoundError, ValueError):
                state = {}
            now = self._clock()
            for key in list(state):  # what has expired, every client's
                entry = state[key]
                entry["hour"] = [t for t in entry["hour"] if now - t < HOUR]
                entry["running"] = {r: v for r, v in entry["running"].items()
                                    if v["until"] > now}
                if not entry["hour"] and not entry["running"]:
                    del state[key]
            entry = state.setdefault(client, {"hour": [], "running": {}})
            try:
                change(entry, now)
            finally:
                if not entry["hour"] and not entry["running"]:
                    state.pop(client, None)
                tmp = f"{self.path}.{os.getpid()}.tmp"
                with open(tmp, "w") as f:
                    json.dump(state, f)
                os.replace(tmp, self.path)


def _who(client: str) -> str:
    kind, _, name = client.partition(":")
    return f"user {name}" if kind == "user" else f"address {name}"


def _minutes(seconds: int) -> str:
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"
