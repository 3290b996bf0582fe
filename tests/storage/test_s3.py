"""What only the S3 driver does (the shared suite is test_conformance.py),
against moto's S3 server."""
import base64
import hashlib
import io
import os
import time
import urllib.parse

import pytest

from storage import IntegrityError, StorageUnavailable
from storage.s3 import S3Storage
from tests.storage.test_conformance import blob, md5


@pytest.fixture
def sent(s3_server):
    """A client of moto's server, and the requests it sends: (operation, headers)."""
    client = s3_server.client()
    seen = []
    client.meta.events.register(
        "before-send.s3.*",
        lambda request, **kwargs: seen.append((kwargs["event_name"].split(".")[-1],
                                               dict(request.headers))))
    return client, seen


def test_every_put_carries_the_content_md5(sent, s3_bucket):
    client, seen = sent
    driver = S3Storage(s3_bucket, client=client)
    data = os.urandom(10_000)
    driver.put(blob(data), io.BytesIO(data), size=len(data), md5=md5(data))
    driver.put_bytes("manifests/m", b"{}", "application/json")
    assert driver.put_if("claims/c", b"{}", version=None)
    puts = [headers for operation, headers in seen if operation == "PutObject"]
    assert len(puts) == 3
    def text(value):
        return value.decode() if isinstance(value, bytes) else value
    sent_md5 = [text(h["Content-MD5"]) for h in puts]
    assert sent_md5 == [base64.b64encode(hashlib.md5(d).digest()).decode()
                        for d in (data, b"{}", b"{}")]
    # each written where there was nothing
    assert [text(h.get("If-None-Match")) for h in puts] == ["*", "*", "*"]


def test_a_body_changed_on_the_way_is_taken_back(s3_server, s3_bucket):
    """moto does not check the Content-MD5 as S3 does; the driver compares
    the ETag it reports and deletes a mismatched object."""
    driver = S3Storage(s3_bucket, client=s3_server.client())
    data = os.urandom(5000)

    class ChangesOnSecondPass(io.BytesIO):
        passes = 0

        def seek(self, pos, whence=0):
            if pos == 0 and whence == 0:
                self.passes += 1
                if self.passes == 2:
                    self.getbuffer()[10] ^= 0xFF
            return super().seek(pos, whence)

    with pytest.raises(IntegrityError, match="stored MD5"):
        driver.put(blob(data), ChangesOnSecondPass(data), size=len(data), md5=md5(data))
    assert not driver.exists(blob(data))


def test_large_blobs_go_in_parts_each_checked(sent, s3_bucket):
    client, seen = sent
    part = 5 << 20  # moto's (and S3's) smallest part but the last
    driver = S3Storage(s3_bucket, client=client, multipart_above=part, part_size=part)
    data = os.urandom(2 * part + 1000)
    driver.put(blob(data), io.BytesIO(data), size=len(data), md5=md5(data))
    with driver.open(blob(data)) as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()
    parts = [h for operation, h in seen if operation == "UploadPart"]
    assert len(parts) == 3 and all("Content-MD5" in h for h in parts)


def test_presigned_urls_live_minutes_and_are_handed_out_for_half(s3_server, s3_bucket):
    driver = S3Storage(s3_bucket, client=s3_server.client())
    data = b"a blob"
    driver.put_bytes(blob(data), data)
    url = driver.url(blob(data))
    expires = int(urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["Expires"][0])
    assert 290 <= expires - time.time() <= 300
    assert driver.url(blob(data)) == url  # the same URL within half its life


def test_retries_are_botocores_standard_mode(s3_server, s3_bucket, monkeypatch):
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    driver = S3Storage(s3_bucket)
    assert driver._s3.meta.config.retries["mode"] == "standard"
    assert driver._s3.meta.endpoint_url == s3_server.url


def test_an_endpoint_that_does_not_answer_is_unavailable(s3_server):
    import boto3
    import botocore.config
    from tests.server import free_port
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{free_port()}",
                          region_name="us-east-1", aws_access_key_id="a",
                          aws_secret_access_key="b",
                          config=botocore.config.Config(retries={"mode": "standard",
                                                                 "max_attempts": 2},
                                                        connect_timeout=1))
    with pytest.raises(StorageUnavailable, match="opening the bucket: EndpointConnectionError"):
        S3Storage("images", client=client)
