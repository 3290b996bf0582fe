"""The Nix binary cache the registry fills: each built closure, signed.

Instances and builders list the cache in `substituters` with its public
key, so a closure one machine built is fetched, not built again, by the
others.  Copying is the job's last step, after the image is stored and its
pull answered; a cache that cannot be written is logged and counted and
never fails a pull.

Paths are signed in the local store first (`nix store sign`), then copied
(`nix copy`): signatures travel with the paths to every kind of store this
Nix can write (a `file://` folder or mounted bucket, `ssh://`, `ssh-ng://`),
where a `secret-key` store parameter would sign for binary cache stores only.
"""
from __future__ import annotations

import base64
import logging
import threading
import time
import urllib.parse
from dataclasses import dataclass

from .. import process

logger = logging.getLogger(__name__)

# Store URLs `nix copy --to` opens in Debian's Nix 2.8 (it has no s3:// store).
SCHEMES = ("file", "ssh", "ssh-ng")
NIX = ("nix", "--extra-experimental-features", "nix-command")

class NotASecretKey(ValueError):
    """A secret key file that is not one `nix-store --generate-binary-cache-key` wrote."""


def public_key(secret_key_text: str) -> str:
    """The public key (`name:base64`) of a Nix secret key file's text: an
    ed25519 secret key holds its public key as its last 32 bytes."""
    name, sep, encoded = secret_key_text.strip().partition(":")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except ValueError:
        raw = b""
    if not (name and sep and len(raw) == 64):
        raise NotASecretKey("it is not a Nix secret key (name:base64 of 64 bytes, as "
                        "`nix-store --generate-binary-cache-key` writes)")
    return f"{name}:{base64.b64encode(raw[32:]).decode()}"


def check_url(url: str) -> None:
    """ValueError saying what is wrong with a cache URL."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ValueError(f"must be a store URL this Nix can copy to ({', '.join(s + '://' for s in SCHEMES)}; "
                         "Debian's Nix 2.8 has no s3:// store: mount the bucket and use file://)")


@dataclass(frozen=True)
class CopyStatus:
    ok: bool
    at: float            # time.time() of the copy's end
    paths: int
    seconds: float
    error: str = ""


class BinaryCache:
    """Signs and copies closures to `url` with the secret key in `key_file`."""

    def __init__(self, url: str, key_file: str, *, timeout: float = 600.0):
        self.url = url
        self.key_file = key_file
        self.timeout = timeout
        self._lock = threading.Lock()
        self._last: CopyStatus | None = None
        self._failures = 0

    def copy(self, paths, log_path=None) -> CopyStatus:
        """Sign `paths` (with their closures) and copy them to the cache;
        what happened, never an exception for the cache's own trouble."""
        started = time.monotonic()
        paths = sorted(paths)
        error = ""
        for cmd in ([*NIX, "store", "sign", "--recursive", "--key-file", self.key_file, *paths],
                    [*NIX, "copy", "--to", self.url, *paths]):
            try:
                done = process.run(cmd, timeout=max(self.timeout - (time.monotonic() - started), 1),
                                   log_path=log_path)
            except process.Timeout:
                error = f"{cmd[3]} took more than {self.timeout:.0f}s"
                break
            except OSError as e:
                error = f"cannot run nix: {e.strerror}"
                break
            if done.returncode != 0:
                lines = [l for l in done.stderr_tail.splitlines() if l.strip()]
                error = f"nix {cmd[3]} failed: {lines[-1] if lines else 'no output'}"
                break
        status = CopyStatus(ok=not error, at=time.time(), paths=len(paths),
                            seconds=time.monotonic() - started, error=error)
        with self._lock:
            self._last = status
            self._failures += not status.ok
        # imported here: app/config.py checks the settings with this module
        # before prometheus_client may be imported (gunicorn's settings)
        from .. import metrics
        metrics.NIX_CACHE_COPIES.labels("ok" if status.ok else "failed").inc()
        if status.ok:
            logger.info("copied %d store paths to the Nix binary cache %s in %.1fs", len(paths),
                        self.url, status.seconds)
        else:
            logger.warning("could not copy %d store paths to the Nix binary cache %s: %s "
                           "(the image is served all the same)", len(paths), self.url, error)
        return status

    def status(self) -> dict:
        """What /readyz's details say of the cache (this process's copies)."""
        with self._lock:
            last, failures = self._last, self._failures
        return {"url": self.url, "failed_copies": failures,
                "last_copy": None if last is None else {
                    "ok": last.ok, "at": last.at, "paths": last.paths,
                    "seconds": round(last.seconds, 2), **({"error": last.error} if last.error else {})}}
