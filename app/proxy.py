"""X-Forwarded-* headers, believed only from the load balancers we trust."""
from __future__ import annotations

from werkzeug.middleware.proxy_fix import ProxyFix


class TrustedProxyFix:
    """Apply ProxyFix (client address, scheme, host) only to requests whose
    peer is in FORWARDED_ALLOW_IPS, so a client cannot set its own address
    or the host that pages show.  The client's address is the entry of
    X-Forwarded-For `hops` places from the right (each proxy appends the
    address it saw; the leftmost entries are whatever the client wrote)."""

    def __init__(self, app, allowed: str, hops: int = 1):
        self.app = app
        self.fixed = ProxyFix(app, x_for=hops, x_proto=1, x_host=1)
        self.allowed = {a.strip() for a in allowed.split(",") if a.strip()}

    def __call__(self, environ, start_response):
        if "*" in self.allowed or environ.get("REMOTE_ADDR") in self.allowed:
            return self.fixed(environ, start_response)
        return self.app(environ, start_response)
