"""The platforms an image can be made for: OCI's names and Nix's.

An OCI platform (`linux/arm64`) is what clients ask for and what image
configs and indexes carry; a Nix system (`aarch64-linux`) is what Nix
builds for.  `variant` is set where Docker expects one (it normalises
arm64 to `arm64/v8` and matches an image that says so).
"""
from __future__ import annotations

import platform as _host
from dataclasses import dataclass


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    system: str                  # Nix's name for it
    variant: str | None = None

    @property
    def name(self) -> str:
        """`linux/amd64`, `linux/arm64`: as NIXERY_PLATFORMS and clients spell it."""
        return f"{self.os}/{self.architecture}"

    def descriptor(self) -> dict:
        """The `platform` of an image index entry."""
        d = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            d["variant"] = self.variant
        return d


AMD64 = Platform("linux", "amd64", "x86_64-linux")
ARM64 = Platform("linux", "arm64", "aarch64-linux", "v8")
KNOWN = {p.name: p for p in (AMD64, ARM64)}

# A leading name component that pins an image to one platform (Nixery's).
PREFIXES = {"arm64": ARM64}

HOST = {"x86_64": AMD64, "aarch64": ARM64}.get(_host.machine(), AMD64)


def parse(spec: str) -> tuple[Platform, ...]:
    """`linux/amd64,linux/arm64` -> platforms in that order (the first is
    what clients that take no index get); ValueError naming what is wrong."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ValueError("name at least one platform")
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        raise ValueError(f"unknown platform {unknown[0]!r}; this registry builds "
                         f"{', '.join(KNOWN)}")
    if len(set(names)) != len(names):
        raise ValueError("a platform is named twice")
    return tuple(KNOWN[n] for n in names)
