"""Connections spread evenly over a server's workers.

Every worker waits on the one listening socket, and whichever wakes first
takes a new connection: when clients connect at once (a pull's client opens
its connections together, nginx in front opens its kept-alive ones), one
worker often takes most of them.  A worker is one process, and its Python
runs on one core at a time: with seven of eight busy connections on one
worker and one on the other, half the machine waits (docs/benchmarks.md,
"Whole pulls": 1,000 pulls/s against 1,750 for an even split).

So each worker writes how many connections it holds into a table the
master made before forking (shared memory, a slot per worker, written only
by its worker), and takes a new connection only while it holds no more
than the others that are alive.  The one holding fewest always takes, so a
connection is never left waiting on all of them; figures up to a moment
old only make a worker wait a moment (it looks again every LOOK_AGAIN
seconds while it waits).
"""
from __future__ import annotations

import mmap
import os
import struct

SLOTS = 256
LOOK_AGAIN = 0.02
_SLOT = struct.Struct("=ii")  # a worker's pid (0: free) and its connections


class Balance:
    def __init__(self, slots: int = SLOTS):
        self.slots = slots
        # anonymous and shared: the workers forked after see the same pages
        self._map = mmap.mmap(-1, slots * _SLOT.size)

    def slot_of(self, age: int) -> int:
        """A worker's slot, by gunicorn's number for it (unique and rising:
        no two live workers share one unless 256 started between them)."""
        return age % self.slots

    def hold(self, slot: int, connections: int) -> None:
        """In the worker: it holds this many connections now."""
        _SLOT.pack_into(self._map, slot * _SLOT.size, os.getpid(), connections)

    def leave(self, slot: int, pid: int) -> None:
        """The worker `pid` is gone (in the master too, when it reaps one
        that was killed): its slot counts no more."""
        offset = slot * _SLOT.size
        if _SLOT.unpack_from(self._map, offset)[0] == pid:
            _SLOT.pack_into(self._map, offset, 0, 0)

    def may_take(self, slot: int, connections: int) -> bool:
        """Whether a worker holding `connections` takes a new one: no other
        live worker holds fewer."""
        self.hold(slot, connections)
        me = os.getpid()
        for pid, held in _SLOT.iter_unpack(self._map):
            if pid and held < connections and pid != me and _alive(pid):
                return False
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
