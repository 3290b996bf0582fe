"""Whatever a client sends, the answer is a registry answer, never a 500."""
from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import create_app
from app.config import Config
from tests.conftest import PKGS

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

# Names from the registry grammar (which may name packages or not), and
# anything at all.
component = st.from_regex(r"[a-z0-9]{1,8}([._-][a-z0-9]{1,5})?", fullmatch=True)
grammatical = st.lists(component, min_size=1, max_size=3).map("/".join)
anything = st.text(min_size=0, max_size=300)
path_text = st.one_of(grammatical, anything,
                      st.sampled_from(["..", "%2e%2e", "a//b", "a/../b", "./", "\x00", "\r\n",
                                       "é", "a" * 300, "../" * 40]))
tag = st.one_of(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,20}", fullmatch=True), anything,
                st.just("t" * 200))
digest = st.one_of(
    st.from_regex(r"sha256:[0-9a-f]{64}", fullmatch=True),
    st.from_regex(r"sha(256|512|1):[0-9a-fA-F]{0,130}", fullmatch=True),
    st.from_regex(r"[a-z0-9+._-]{1,12}:[A-Za-z0-9=_-]{0,80}", fullmatch=True),
    anything)
header_value = st.text(alphabet=string.printable.replace("\r", "").replace("\n", ""),
                       max_size=2000)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    config = Config(pkgs_path=str(PKGS), nix_timeout=60,
                    storage_path=str(tmp_path_factory.mktemp("storage")))
    app = create_app(config)
    c = app.test_client()
    # one real image, so blob requests meet real blobs too
    r = c.get("/v2/hello/manifests/latest")
    assert r.status_code == 200
    c.layer = r.get_json()["layers"][0]["digest"]
    return c


def check(r, method="GET"):
    assert r.status_code < 500, r.get_data(as_text=True)
    if r.status_code >= 400:
        assert r.content_type == "application/json"
        if method != "HEAD":  # HEAD answers carry no body
            assert set(r.get_json()["errors"][0]) == {"code", "message", "detail"}


def quote(text):
    from urllib.parse import quote as q
    return q(text, safe="/:")


@SETTINGS
@given(name=path_text, reference=st.one_of(tag, digest),
       kind=st.sampled_from(["manifests", "blobs"]),
       method=st.sampled_from(["GET", "HEAD", "PUT", "DELETE", "POST", "PATCH", "OPTIONS"]))
def test_any_path_any_method(client, name, reference, kind, method):
    check(client.open(f"/v2/{quote(name)}/{kind}/{quote(reference)}", method=method), method)


@SETTINGS
@given(accept=st.lists(header_value, max_size=8), range_=header_value,
       extra=st.dictionaries(st.from_regex(r"X-[A-Za-z-]{1,20}", fullmatch=True), header_value,
                             max_size=5))
def test_any_headers(client, accept, range_, extra):
    headers = [("Accept", a) for a in accept] + [("Range", range_)] + list(extra.items())
    check(client.get("/v2/hello/manifests/latest", headers=headers))
    r = client.get(f"/v2/hello/blobs/{client.layer}", headers=headers)
    check(r)
    assert r.status_code in (200, 206, 416)


def test_huge_header(client):
    check(client.get("/v2/hello/manifests/latest", headers={"Accept": "a/b," * 20000}))
