"""Who the client is (app/proxy.py): one rule, the same as gunicorn's for
which peers are trusted, followed by quotas, pages and the configuration."""
from __future__ import annotations

import ipaddress
import os
import subprocess
import sys

import pytest
from gunicorn.config import Config as GunicornConfig
from gunicorn.http.message import _ip_in_allow_list
from hypothesis import given, settings, strategies as st

from app import create_app, proxy
from app.config import Config, ConfigError
from app.proxy import Proxies
from tests.conftest import PKGS, ROOT

# FORWARDED_ALLOW_IPS, the TCP peer, X-Forwarded-For -> the client
CLIENTS = {
    "a direct client": ("127.0.0.1", "203.0.113.9", None, "203.0.113.9"),
    "an untrusted peer's header is not believed": ("127.0.0.1", "198.51.100.2",
                                                   "203.0.113.9", "198.51.100.2"),
    "the address the proxy appended": ("127.0.0.1", "127.0.0.1", "203.0.113.9",
                                       "203.0.113.9"),
    "not what the client wrote before it": ("127.0.0.1", "127.0.0.1",
                                            "10.6.6.6, 203.0.113.9", "203.0.113.9"),
    "a range trusts every proxy in it": ("10.0.0.0/8", "10.1.2.3", "203.0.113.9, 10.9.9.9",
                                         "203.0.113.9"),
    "proxies of several ranges": ("10.0.0.0/8, 192.168.0.0/16", "10.1.2.3",
                                  "6.6.6.6, 203.0.113.9, 192.168.1.1, 10.2.2.2",
                                  "203.0.113.9"),
    "an untrusted hop stops the walk": ("10.0.0.0/8", "10.1.2.3",
                                        "10.5.5.5, 198.51.100.7, 10.9.9.9", "198.51.100.7"),
    "proxies all the way: the farthest": ("127.0.0.0/8", "127.0.0.1",
                                          "127.0.0.5, 127.0.0.9", "127.0.0.5"),
    "IPv6": ("::1, 2001:db8::/32", "::1", "2001:db8::7, 2001:db9::1", "2001:db9::1"),
    "IPv6 behind IPv4": ("127.0.0.0/8", "127.0.0.1", "2001:db8::7", "2001:db8::7"),
    "an address with a port": ("127.0.0.1", "127.0.0.1", "203.0.113.9:4711", "203.0.113.9"),
    "an IPv6 address with a port": ("127.0.0.1", "127.0.0.1", "[2001:db8::7]:443",
                                    "2001:db8::7"),
    "not an address: the proxy that wrote it": ("127.0.0.0/8", "127.0.0.1",
                                                "203.0.113.9, unix:, 127.0.0.2", "127.0.0.2"),
    "an empty entry": ("127.0.0.1", "127.0.0.1", "203.0.113.9, ", "127.0.0.1"),
    "`*` trusts the peer, and the rightmost entry": ("*", "198.51.100.2",
                                                     "6.6.6.6, 203.0.113.9", "203.0.113.9"),
    "`*` and the balancer's own ranges": ("*, 35.191.0.0/16", "35.191.3.4",
                                          "6.6.6.6, 203.0.113.9, 35.191.0.8", "203.0.113.9"),
    "repeated headers, joined": ("127.0.0.1", "127.0.0.1", "6.6.6.6,203.0.113.9",
                                 "203.0.113.9"),
}


@pytest.mark.parametrize("spec, peer, forwarded_for, client", CLIENTS.values(),
                         ids=CLIENTS.keys())
def test_the_client_is_the_rightmost_address_not_itself_a_trusted_proxy(
        spec, peer, forwarded_for, client):
    assert Proxies(spec).client(peer, forwarded_for) == client
    environ = {"REMOTE_ADDR": peer}
    if forwarded_for is not None:
        environ["HTTP_X_FORWARDED_FOR"] = forwarded_for
    assert Proxies(spec).client_of(environ) == client
    # as the middleware leaves it for everything after it
    seen = []
    proxy.Forwarded(lambda env, start: seen.append(dict(env)) or [], Proxies(spec))(
        environ, None)
    assert seen[0]["REMOTE_ADDR"] == client
    assert proxy.peer_of(seen[0]) == peer
    assert Proxies(spec).client_of(seen[0]) == client


networks = st.one_of(
    st.builds(lambda a, n: f"{ipaddress.ip_network(f'{a}/{n}', strict=False)}",
              st.ip_addresses(v=4), st.integers(8, 32)),
    st.builds(lambda a, n: f"{ipaddress.ip_network(f'{a}/{n}', strict=False)}",
              st.ip_addresses(v=6), st.integers(16, 128)),
    st.sampled_from(["127.0.0.1", "::1", "127.0.0.0/8", "10.0.0.0/8", "*", "::/0"]))
peers = st.one_of(st.ip_addresses().map(str),
                  st.sampled_from(["127.0.0.1", "127.0.0.2", "::1", "10.1.2.3",
                                   "::ffff:127.0.0.1", "", "localhost", "fe80::1%eth0"]))


@settings(max_examples=300, derandomize=True, database=None)
@given(st.lists(networks, min_size=1, max_size=4), peers)
def test_a_peer_is_trusted_exactly_when_gunicorn_trusts_it(listed, peer):
    """gunicorn decides the scheme with the same list (gunicorn.conf.py):
    the two must never disagree about a peer."""
    spec = ",".join(listed)
    cfg = GunicornConfig()
    cfg.set("forwarded_allow_ips", Config(forwarded_allow_ips=spec).forwarded_allow_ips)
    assert Proxies(spec).trusts(peer) == _ip_in_allow_list(
        peer, cfg.forwarded_allow_ips, cfg.forwarded_allow_networks())


@pytest.mark.parametrize("spec, message", [
    ("10.0.0.1/8", "'10.0.0.1/8' is neither an address nor a CIDR range (a range is written "
                   "from its first address: 10.0.0.0/8)"),
    ("127.0.0.1, proxy.internal", "'proxy.internal' is neither an address nor a CIDR range"),
    ("10.0.0.0/33", "'10.0.0.0/33' is neither an address nor a CIDR range"),
])
def test_a_bad_forwarded_allow_ips_stops_the_start_naming_it(spec, message):
    with pytest.raises(ConfigError) as e:
        Config.from_env({"FORWARDED_ALLOW_IPS": spec})
    assert str(e.value) == f"FORWARDED_ALLOW_IPS: {message}"


def test_forwarded_allow_ips_is_handed_to_gunicorn_as_it_reads_it():
    config = Config.from_env({"FORWARDED_ALLOW_IPS": " 10.0.0.0/8,, ::1 ,*, "})
    assert config.forwarded_allow_ips == "10.0.0.0/8,::1,*"
    cfg = GunicornConfig()
    cfg.set("forwarded_allow_ips", config.forwarded_allow_ips)  # gunicorn's own check
    assert cfg.forwarded_allow_ips == ["10.0.0.0/8", "::1", "*"]


def _start_gunicorn(tmp_path, **env):
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    return subprocess.run([gunicorn, "-c", "gunicorn.conf.py"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60,
                          env=dict(os.environ, STORAGE_PATH=str(tmp_path), **env))


def test_proxy_hops_is_gone_and_says_where_to_go(tmp_path):
    with pytest.raises(ConfigError, match="NIXERY_PROXY_HOPS is no longer read: list every "
                                          "proxy in front in FORWARDED_ALLOW_IPS"):
        Config.from_env({"NIXERY_PROXY_HOPS": "2"})
    done = _start_gunicorn(tmp_path, NIXERY_PROXY_HOPS="1")
    assert done.returncode != 0
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("configuration error: NIXERY_PROXY_HOPS is no longer read")
    assert "FORWARDED_ALLOW_IPS" in line


def test_gunicorn_is_not_given_another_list_than_the_registry(tmp_path):
    done = _start_gunicorn(tmp_path, GUNICORN_CMD_ARGS="--forwarded-allow-ips 10.0.0.1 "
                                                       "--bind 127.0.0.1:0")
    assert done.returncode != 0
    assert "set FORWARDED_ALLOW_IPS alone" in done.stderr and "Traceback" not in done.stderr


def test_quotas_and_pages_see_the_client_and_host_a_trusted_range_forwards(tmp_path):
    from app import quota
    app = create_app(Config(pkgs_path=str(PKGS), storage_path=str(tmp_path / "s"),
                            forwarded_allow_ips="10.0.0.0/8"))
    images = app.extensions["images"]
    seen = []
    real = images.image
    images.image = lambda *a, client=None, **kw: seen.append(client) or real(
        *a, client=client, **kw)
    behind = app.test_client()
    behind.environ_base["REMOTE_ADDR"] = "10.20.30.40"  # a balancer in the range
    headers = {"X-Forwarded-For": "10.6.6.6, 203.0.113.5, 10.1.1.1",
               "X-Forwarded-Host": "evil.example, registry.example:5000"}
    behind.get("/v2/hello/manifests/latest", headers=headers)
    assert seen[-1] == quota.client_key(None, "203.0.113.5")
    page = behind.get("/", headers=headers).get_data(as_text=True)
    assert "docker pull registry.example:5000/" in page
    # the same headers from a peer outside it are the client's own words
    direct = app.test_client()
    direct.environ_base["REMOTE_ADDR"] = "198.51.100.2"
    direct.get("/v2/hello/manifests/latest", headers=headers)
    assert seen[-1] == quota.client_key(None, "198.51.100.2")
    page = direct.get("/", headers=headers).get_data(as_text=True)
    assert "registry.example:5000" not in page


@pytest.mark.parametrize("peer, headers, local", [
    ("127.0.0.1", {}, True),
    ("::1", {}, True),
    ("127.0.0.1", {"X-Forwarded-For": "203.0.113.9"}, False),  # nginx on this machine
    ("127.0.0.1", {"X-Real-IP": "203.0.113.9"}, False),
    ("127.0.0.1", {"Forwarded": "for=203.0.113.9"}, False),
    ("127.0.0.1", {"X-Forwarded-For": "127.0.0.1"}, False),
    ("10.0.0.1", {}, False),
    ("", {}, False),
])
def test_a_caller_on_this_machine_is_one_no_proxy_forwarded(peer, headers, local):
    environ = {"REMOTE_ADDR": peer}
    environ.update({"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()})
    proxy.Forwarded(lambda env, start: [], Proxies("127.0.0.0/8"))(environ, None)
    assert proxy.is_local(environ) is local
