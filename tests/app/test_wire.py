"""HTTP details of answers: negotiation and status lines."""
import pytest

from app.wire import REASON_MAX, negotiate, reason
from builders.manifest import DOCKER_MANIFEST, OCI_MANIFEST


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


def test_an_error_message_as_a_status_line():
    assert reason("x" * 1000) == "x" * (REASON_MAX - 3) + "..."
    assert reason("tab\tline\r\nbreak") == "tab?line??break"
