"""The remote builders Nix is set up with, and whether they answer.

The registry does not choose builders: Nix's own `builders` setting (in
nix.conf, NIX_CONFIG or a machines file) does, and Nix sends builds there.
This reads that setting back from Nix and asks each machine's store to
answer (`nix store ping`), for /readyz's details and the metrics; a
builder that is down is reported, not a reason to take the instance out of
service: images already built still pull.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

from .. import metrics, process
from .nixcache import NIX

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Machine:
    uri: str
    systems: str
    ssh_key: str | None

    @property
    def store(self) -> str:
        """The machine's store URL as `nix store ping` takes it, with its key."""
        if not self.ssh_key:
            return self.uri
        return f"{self.uri}{'&' if '?' in self.uri else '?'}ssh-key={self.ssh_key}"


def parse_machines(text: str) -> list[Machine]:
    """Nix's machine lines (`builders`, or a machines file): URI, systems,
    SSH key, then jobs, speed and features, `-` for a default; lines or
    `;`-separated, `#` comments."""
    machines = []
    for line in text.replace(";", "\n").splitlines():
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        key = fields[2] if len(fields) > 2 and fields[2] != "-" else None
        machines.append(Machine(fields[0], fields[1] if len(fields) > 1 else "-", key))
    return machines


class RemoteBuilders:
    """What /readyz says of the builders; answers are believed `ttl` seconds."""

    def __init__(self, ttl: float = 30, clock=time.monotonic):
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._at: float | None = None
        self._report: list[dict] = []

    def machines(self) -> list[Machine]:
        done = process.run([*NIX, "show-config", "--json"], timeout=20)
        if done.returncode != 0:
            raise RuntimeError(f"nix show-config failed: {done.stderr_tail.strip()[-200:]}")
        spec = json.loads(done.stdout)["builders"]["value"].strip()
        if spec.startswith("@"):
            try:
                with open(spec[1:]) as f:
                    spec = f.read()
            except FileNotFoundError:
                return []  # Nix's default, /etc/nix/machines, seldom exists
        return parse_machines(spec)

    def report(self) -> list[dict]:
        """Each machine, and whether its store answered; [] without builders."""
        with self._lock:
            if self._at is not None and self._clock() - self._at < self.ttl:
                return self._report
        report = []
        for machine in self.machines():
            entry = {"uri": machine.uri, "systems": machine.systems}
            done = process.run([*NIX, "store", "ping", "--store", machine.store], timeout=20)
            entry["reachable"] = done.returncode == 0
            if done.returncode != 0:
                lines = [l for l in done.stderr_tail.splitlines() if l.strip()]
                entry["error"] = lines[-1] if lines else f"exit code {done.returncode}"
                logger.warning("remote builder %s does not answer: %s", machine.uri,
                               entry["error"])
            report.append(entry)
        metrics.NIX_BUILDERS.labels("reachable").set(sum(e["reachable"] for e in report))
        metrics.NIX_BUILDERS.labels("configured").set(len(report))
        with self._lock:
            self._at, self._report = self._clock(), report
        return report
