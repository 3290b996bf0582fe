"""X-Forwarded-* headers, believed only from the load balancers we trust."""
from __future__ import annotations

from werkzeug.middleware.proxy_fix import ProxyFix


class TrustedProxyFix:
    """Apply ProxyFix (one proxy hop: client address, scheme, host) only to
    requests whose peer is in FORWARDED_ALLOW_IPS, so a client cannot set
    its own address or the host that pages show."""

    def __init__(self, app, allowed: str):
        self.app = app
        self.fixed = ProxyFix(app, x_for=1, x_proto=1, x_host=1)
        self.allowed = {a.strip() for a in allowed.split(",") if a.strip()}

    def __call__(self, environ, start_response):
        if "*" in self.allowed or environ.get("REMOTE_ADDR") in self.allowed:
            return self.fixed(environ, start_response)
        return self.app(environ, start_response)
