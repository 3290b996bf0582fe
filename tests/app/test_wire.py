"""HTTP details of answers: negotiation and status lines."""
import pytest

from app.wire import REASON_MAX, admits_index, negotiate, reason
from builders.image.manifest import (DOCKER_LIST, DOCKER_MANIFEST, INDEX_TYPES, OCI_INDEX,
                                     OCI_MANIFEST)


@pytest.mark.parametrize("headers,expected", [
    ([], DOCKER_MANIFEST),
    (["*/*"], DOCKER_MANIFEST),
    ([OCI_MANIFEST, DOCKER_MANIFEST], OCI_MANIFEST),
    ([f"{DOCKER_MANIFEST}, {OCI_MANIFEST}"], DOCKER_MANIFEST),
    ([f"{DOCKER_MANIFEST}; q=0.2, {OCI_MANIFEST}; q=0.9"], OCI_MANIFEST),
    ([f"{OCI_MANIFEST};q=0"], DOCKER_MANIFEST),
    (["application/vnd.docker.distribution.manifest.v1+prettyjws"], DOCKER_MANIFEST),
])
def test_negotiate(headers, expected):
    # a WSGI server joins repeated headers with commas
    assert negotiate(", ".join(headers)) == expected


# what the clients send (docker 20.10, containerd 1.6, containers/image 5)
DOCKER_ACCEPT = f"{DOCKER_MANIFEST}, {DOCKER_LIST}, {OCI_MANIFEST}, {OCI_INDEX}"
CONTAINERD_ACCEPT = f"{DOCKER_MANIFEST}, {DOCKER_LIST}, {OCI_MANIFEST}, {OCI_INDEX}, */*"
SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
SKOPEO_ACCEPT = f"{OCI_MANIFEST}, {DOCKER_MANIFEST}, {SCHEMA1}, {DOCKER_LIST}, {OCI_INDEX}"


@pytest.mark.parametrize("accept,index,expected", [
    (DOCKER_ACCEPT, True, DOCKER_LIST),
    (CONTAINERD_ACCEPT, True, DOCKER_LIST),
    (SKOPEO_ACCEPT, True, DOCKER_LIST),
    (f"{OCI_MANIFEST}, {OCI_INDEX}", True, OCI_INDEX),
    (f"{DOCKER_MANIFEST}, {OCI_MANIFEST}", False, None),
    (f"{OCI_INDEX};q=0, {DOCKER_MANIFEST}", False, None),
    ("*/*", False, None),
    ("", False, None),
])
def test_an_index_goes_to_clients_that_take_one(accept, index, expected):
    assert admits_index(accept) is index
    if index:
        assert negotiate(accept, INDEX_TYPES) == expected


def test_an_error_message_as_a_status_line():
    assert reason("x" * 1000) == "x" * (REASON_MAX - 3) + "..."
    assert reason("tab\tline\r\nbreak") == "tab?line??break"
