"""Who may pull: HTTP Basic credentials checked against an htpasswd file of
bcrypt entries (NIXERY_HTPASSWD), or the user an authenticating proxy in
front names in a header, believed only from that proxy's addresses.

Every request needs it, on every path (the /v2 API below Flask, the pages,
/metrics), except the probes /healthz and /readyz.  A refusal is a 401 with
`WWW-Authenticate: Basic` and the registry's JSON `UNAUTHORIZED` error,
whichever endpoint it hit: containerd starts a pull with a HEAD of a
manifest, and docker, podman, skopeo and crane log in by answering that
challenge.

Basic auth sends the password with every request, and a pull is dozens of
requests, while bcrypt is slow on purpose: a successful check is
remembered for a minute, keyed by a hash of the credentials and of the
file's state (a changed password or file is noticed at once).  Failures
are counted per client (the address app/proxy.py gives, IPv6 by its /64,
as build quotas count them) and user name: past a few a minute that user
is refused from that client without a check, while other clients, and
other users of the same one (an office behind one address), still log in.
Past more a minute from one client, whatever the user names, it is
refused without a check too: bcrypt cannot be used to burn the CPU.  An
unknown user costs a check against a dummy hash, as a known one does.
Credentials are never logged.

The probes answer without credentials, but a probe that brings good ones
is signed in: /readyz shows its details to signed-in users.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import threading
import time
from collections import deque

import bcrypt
import cachetools

from . import metrics, proxy, wire
from .errors import RegistryError, TooManyRequests
from .quota import client_key
from .scope import REPLAY

logger = logging.getLogger(__name__)

OPEN_PATHS = ("/healthz", "/readyz")
CACHE_SECONDS = 60
# Failed checks of one user name from one client in FAIL_WINDOW seconds
# before that user is refused from there without one, and failed checks
# from one client, whatever the names, before the client is.
FAIL_LIMIT = 10
CLIENT_FAIL_LIMIT = 30
FAIL_WINDOW = 60
USER_KEY_MAX = 256  # of a name, in the failures' keys: any length may be sent
LOG_IN = ("authentication required: log in (docker login, podman login, skopeo login) with a "
          "user of this registry")
BCRYPT_MAX = 72
# the cost of a check of an unknown user, as of a known one
_DUMMY = bcrypt.hashpw(b"no such user", bcrypt.gensalt(rounds=10))


class Unauthorized(RegistryError):
    code, status = "UNAUTHORIZED", 401


class Htpasswd:
    """An htpasswd file of bcrypt entries (`htpasswd -B`), read again when
    it changes (looked at no more than once a second)."""

    def __init__(self, path, clock=time.monotonic):
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._looked_at = None
        self._signature = None
        self._entries: dict[str, bytes] = {}
        self.signature  # read it now: a bad file stops the server at start

    @property
    def signature(self) -> str:
        """What identifies the file's current contents."""
        with self._lock:
            now = self._clock()
            if self._looked_at is None or now - self._looked_at >= 1:
                first = self._looked_at is None
                self._looked_at = now
                try:
                    st = os.stat(self.path)
                    signature = f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
                    if signature != self._signature:
                        self._entries = _parse(self.path)
                        self._signature = signature
                        logger.info("read %d users from %s", len(self._entries), self.path)
                except (OSError, ValueError) as e:
                    if first:
                        raise  # at start: the server does not start with it
                    # mid-edit or gone: the users read last stay
                    logger.error("cannot read %s, keeping the users read before: %s",
                                 self.path, e)
            return self._signature

    def verify(self, user: str, password: str) -> bool:
        self.signature  # noqa: B018 - reread the file if it changed
        with self._lock:
            hashed = self._entries.get(user)
        secret = password.encode()
        if len(secret) > BCRYPT_MAX:
            return False  # bcrypt would not look past 72 bytes: refused, not truncated
        ok = bcrypt.checkpw(secret, hashed or _DUMMY)
        return ok and hashed is not None


def _parse(path) -> dict[str, bytes]:
    entries = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, hashed = line.partition(":")
            if not sep or not hashed.startswith(("$2y$", "$2b$", "$2a$")):
                # only bcrypt: MD5 and SHA1 htpasswd entries are too weak to accept
                raise ValueError(f"{path}, line {number}: not a bcrypt entry (make it with "
                                 "htpasswd -B)")
            entries[user] = hashed.encode()
    return entries


class Authenticator:
    def __init__(self, *, htpasswd: Htpasswd | None = None, user_header: str | None = None,
                 user_header_peers: str = "", realm="registry", clock=time.monotonic):
        self.htpasswd = htpasswd
        self.user_header = ("HTTP_" + user_header.upper().replace("-", "_")
                            if user_header else None)
        self.user_header_peers = proxy.Proxies(user_header_peers, any_peer=False)
        self.realm = realm
        self._clock = clock
        # a good check is remembered for a minute; a wrong one raises, and
        # is not
        self._checked = cachetools.cached(
            cachetools.TTLCache(maxsize=4096, ttl=CACHE_SECONDS),
            key=lambda key, user, password, address, count=True: key,
            lock=threading.Lock())(self._check)
        self._failures: dict[tuple, deque] = {}
        self._lock = threading.Lock()

    def user_of(self, environ, count_failures=True) -> str:
        """The user this request is from; Unauthorized or TooManyRequests.
        Without `count_failures` wrong credentials are refused but not
        counted (app/front.py's check, which the request itself follows)."""
        if self.user_header and self.user_header_peers.trusts(proxy.peer_of(environ)):
            user = environ.get(self.user_header, "").strip()
            if user:
                return user
        header = environ.get("HTTP_AUTHORIZATION", "").strip()
        if not self.htpasswd or not header:
            raise self._challenge(LOG_IN)
        scheme, _, token = header.partition(" ")
        try:
            user, sep, password = base64.b64decode(token.strip(), validate=True).decode(
                "utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            sep = ""
        if scheme.lower() != "basic" or not sep:
            raise self._challenge("authentication required: send HTTP Basic credentials")
        if not user and not password:
            raise self._challenge(LOG_IN)  # what `curl -u :` and empty logins send
        key = hashlib.sha256(f"{self.htpasswd.signature}\0{user}\0{password}".encode()).digest()
        # REMOTE_ADDR: the client, as app/proxy.py says
        self._checked(key, user, password, environ.get("REMOTE_ADDR", ""), count_failures)
        return user

    def _check(self, key, user, password, address, count=True) -> bool:
        """Check credentials against the users' file (`key` names them and
        the file's state); Unauthorized or TooManyRequests."""
        client = client_key(None, address)
        self._refuse_if_failing(client, user, address)
        if self.htpasswd.verify(user, password):
            return True
        if count:
            self._failed(client, user)
        raise self._challenge("wrong user name or password")

    def signed_in(self, environ) -> str | None:
        """The user of a request that may come without credentials (the
        probes): None without them, and with wrong ones, which count as
        failures all the same."""
        try:
            return self.user_of(environ)
        except RegistryError:
            return None

    def _challenge(self, message):
        return Unauthorized(message, headers={
            "WWW-Authenticate": f'Basic realm="{self.realm}", charset="UTF-8"'})

    def _refuse_if_failing(self, client, user, address):
        now = self._clock()
        with self._lock:
            for key, limit, whom in (
                    ((client, user[:USER_KEY_MAX]), FAIL_LIMIT, f"as {user[:64]!r} from {address}"),
                    ((client, None), CLIENT_FAIL_LIMIT, f"from {address}")):
                failures = self._failures.get(key)
                while failures and now - failures[0] > FAIL_WINDOW:
                    failures.popleft()
                if failures is not None and len(failures) >= limit:
                    wait = int(FAIL_WINDOW - (now - failures[0])) + 1
                    raise TooManyRequests(f"too many failed logins {whom}: try again in {wait}s",
                                          headers={"Retry-After": str(wait)})

    def _failed(self, client, user):
        now = self._clock()
        with self._lock:
            for key in ((client, user[:USER_KEY_MAX]), (client, None)):
                if key not in self._failures and len(self._failures) >= 10000:
                    self._failures.pop(next(iter(self._failures)))  # bounded: the oldest go
                self._failures.setdefault(key, deque()).append(now)


class Authenticate:
    """WSGI: every request authenticated, but the probes; the user goes into
    REMOTE_USER (for the access log and build quotas)."""

    def __init__(self, app, authenticator: Authenticator):
        self.app = app
        self.authenticator = authenticator

    def __call__(self, environ, start_response):
        environ.pop("REMOTE_USER", None)  # this middleware's say alone
        if environ.get("PATH_INFO", "") in OPEN_PATHS:
            if "HTTP_AUTHORIZATION" in environ or (
                    self.authenticator.user_header in environ):
                user = self.authenticator.signed_in(environ)
                if user:
                    environ["REMOTE_USER"] = user
            return self.app(environ, start_response)
        try:
            environ["REMOTE_USER"] = self.authenticator.user_of(environ)
        except RegistryError as e:
            metrics.REFUSALS.labels("auth").inc()
            status, headers, body = e.render()
            if environ.get("PATH_INFO", "").startswith("/v2"):
                headers.append(wire.API_VERSION)
            start_response(f"{status} {wire.reason(e.message)}", headers)
            return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]
        body = self.app(environ, start_response)
        # the answer was for these credentials, checked now: never given
        # again without them being checked (app/http/replay.py)
        environ.pop(REPLAY, None)
        return body


def from_config(config) -> Authenticator:
    if config.htpasswd and not config.tls_in_front:
        logger.warning("pull authentication is on and nothing says TLS ends in front of the "
                       "registry: HTTP Basic credentials travel in clear over plain HTTP. "
                       "Terminate TLS in front (nginx, the load balancer) and set "
                       "NIXERY_TLS_IN_FRONT=1")
    return Authenticator(
        htpasswd=Htpasswd(config.htpasswd) if config.htpasswd else None,
        user_header=config.user_header, user_header_peers=config.user_header_peers or "")
