"""Who the client is: the one rule everything that needs to know follows
(the access log, build quotas, login lockout, the pages' URLs, the user an
authenticating proxy names, readiness details).

Trusted proxies are addresses and CIDR ranges (FORWARDED_ALLOW_IPS; `*`
trusts any peer).  Only from a trusted peer is X-Forwarded-For believed,
and then only so far: each proxy appends the address it saw, so reading
from the right, an entry that is itself a trusted proxy handed the request
on, and the first that is not is the client.  Whatever is left of it was
written by the client and is not believed.  With `*`, which trusts the
peer whoever it is, only the listed ranges count as proxies within the
header: `*` alone takes the rightmost entry.

gunicorn reads the same list (gunicorn.conf.py hands it over) to decide
the scheme from X-Forwarded-Proto, and app/http/http1.py does the same with
this module's `Proxies.trusts`; tests/app/test_proxy.py holds that test to
gunicorn's own.
"""
from __future__ import annotations

import functools
import ipaddress

# Where the WSGI environ keeps the TCP peer once REMOTE_ADDR is the client.
PEER = "registry.peer"
# Headers by which a proxy says it forwarded a request.
_FORWARDING = ("HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_HOST", "HTTP_X_FORWARDED_PROTO",
               "HTTP_FORWARDED", "HTTP_X_REAL_IP", "HTTP_VIA")


class Proxies:
    """A list of trusted addresses and CIDR ranges, comma-separated, parsed
    as gunicorn parses forwarded_allow_ips (a range with host bits set is
    refused); ValueError names a bad entry."""

    def __init__(self, spec: str, *, any_peer: bool = True):
        self.any = False
        networks, entries = [], []
        for entry in (e.strip() for e in spec.split(",")):
            if not entry:
                continue
            if entry == "*":
                if not any_peer:
                    raise ValueError("`*` would let any client in as the proxy; list the "
                                     "proxy's addresses or ranges")
                self.any = True
            else:
                networks.append(_network(entry))
            entries.append(entry)
        self.networks = tuple(networks)
        self.spec = ",".join(entries)  # what gunicorn is given
        # Asked on every forwarded request, of the same few peers and headers.
        self.trusts = functools.lru_cache(maxsize=1024)(self._trusts)
        self._client = functools.lru_cache(maxsize=4096)(self._walk)

    def _trusts(self, peer: str) -> bool:
        """Whether a TCP peer's address is trusted."""
        if self.any:
            return True
        try:
            return self._listed(ipaddress.ip_address(peer))
        except ValueError:
            return False

    def _listed(self, address) -> bool:
        return address is not None and any(address in net for net in self.networks)

    def client(self, peer: str, forwarded_for: str | None) -> str:
        """The client of a request from `peer` with this X-Forwarded-For."""
        if not forwarded_for or not self.trusts(peer):
            return peer
        return self._client(peer, forwarded_for)

    def _walk(self, peer: str, forwarded_for: str) -> str:
        nearest = peer
        for entry in reversed(forwarded_for.split(",")):
            address = _address(entry)
            if address is None:
                # a trusted proxy wrote no address it saw (a unix socket's
                # client, say): the client is not known beyond that proxy
                return nearest
            nearest = str(address)
            if not self._listed(address):
                return nearest
        return nearest  # proxies all the way: the farthest is the client

    def client_of(self, environ) -> str:
        """The client of a WSGI request, as `Forwarded` made it or would."""
        if PEER in environ:
            return environ.get("REMOTE_ADDR", "")
        return self.client(environ.get("REMOTE_ADDR", ""), environ.get("HTTP_X_FORWARDED_FOR"))


def _network(entry: str):
    try:
        return ipaddress.ip_network(entry)
    except ValueError:
        pass
    try:
        first = ipaddress.ip_network(entry, strict=False)
        hint = f" (a range is written from its first address: {first})"
    except ValueError:
        hint = ""
    raise ValueError(f"{entry!r} is neither an address nor a CIDR range{hint}")


def _address(entry: str):
    """An address of X-Forwarded-For, bare or with a port ([v6]:port too),
    or None."""
    entry = entry.strip()
    if entry.startswith("["):
        entry = entry[1:].partition("]")[0]
    elif entry.count(":") == 1:
        entry = entry.partition(":")[0]  # IPv4 and a port, as some balancers write it
    try:
        return ipaddress.ip_address(entry)
    except ValueError:
        return None


def peer_of(environ) -> str:
    """The TCP peer of a request, whatever `Forwarded` made REMOTE_ADDR."""
    return environ.get(PEER) or environ.get("REMOTE_ADDR", "")


def is_local(environ) -> bool:
    """Whether the caller is on this machine itself: the TCP peer is a
    loopback address and no proxy says it forwarded the request (a proxy on
    this machine, nginx say, forwards remote clients)."""
    address = _address(peer_of(environ))
    return (address is not None and address.is_loopback
            and not any(environ.get(h) is not None for h in _FORWARDING))


class Forwarded:
    """WSGI: for a request from a trusted peer, REMOTE_ADDR becomes its
    client (the peer is kept under PEER) and HTTP_HOST the host the client
    asked for (X-Forwarded-Host, the rightmost: the nearest proxy's).  The
    scheme is gunicorn's (see the module)."""

    def __init__(self, app, proxies: Proxies):
        self.app = app
        self.proxies = proxies

    def __call__(self, environ, start_response):
        forwarded_for = environ.get("HTTP_X_FORWARDED_FOR")
        host = environ.get("HTTP_X_FORWARDED_HOST")
        if forwarded_for or host:
            peer = environ.get("REMOTE_ADDR", "")
            if self.proxies.trusts(peer):
                if forwarded_for:
                    environ[PEER] = peer
                    environ["REMOTE_ADDR"] = self.proxies.client(peer, forwarded_for)
                host = host and host.rpartition(",")[2].strip()
                if host:
                    environ["HTTP_HOST"] = host
        return self.app(environ, start_response)
