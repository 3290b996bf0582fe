"""The GCS driver against a real emulator, with the faults a server cannot
be asked for (503s, resets, timeouts, races, refusals) injected on the wire
by `responses`; every other request goes through to fake-gcs-server."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import threading
import time
import tracemalloc
import urllib.parse

import pytest
import requests
import responses
from urllib3.exceptions import ProtocolError

from storage import IntegrityError, StorageUnavailable, keys
from storage.gcs import GCSStorage
from storage.gcs_upload import CHUNK_SIZE

RETRY_SECONDS = 3


def blob_key(data):
    return keys.blob("sha256:" + hashlib.sha256(data).hexdigest())


def md5(data):
    return hashlib.md5(data).hexdigest()


def md5_b64(data):
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def put(driver, key, data):
    driver.put(key, io.BytesIO(data), size=len(data), md5=md5(data))


def reset():
    """What requests raises when the peer resets the connection."""
    return requests.ConnectionError(ProtocolError(
        "Connection aborted.", ConnectionResetError(104, "Connection reset by peer")))


@pytest.fixture
def driver(gcs_emulator, gcs_bucket, gcs_key):
    return GCSStorage(gcs_bucket, endpoint=gcs_emulator.url, credentials_file=gcs_key,
                      retry_seconds=RETRY_SECONDS)


class Wire:
    """Scripted answers for some requests; the rest reach the emulator.

    `sent` logs what really went to the emulator; `count` adds the
    requests that got a scripted answer instead.
    """

    INJECTED = "X-Injected-Fault"

    def __init__(self, emulator):
        self.sent = []
        base = re.escape(emulator.url)
        self.METADATA = ("GET", re.compile(base + r"/storage/v1/b/[^/]+/o/[^/?]+(\?.*)?$"))
        self.UPLOAD = ("POST", re.compile(base + r"/upload/storage/v1/b/[^/]+/o\?.*"))
        self.CHUNK = ("PUT", re.compile(base + r"/upload/storage/v1/b/[^/]+/o\?.*upload_id=.*"))
        self.DOWNLOAD = ("GET", re.compile(base + r"/download/storage/v1/b/[^/]+/o/.*"))

        def send(adapter, request, **kwargs):
            self.sent.append(request)
            return responses._real_send(adapter, request, **kwargs)
        self.rsps = responses.RequestsMock(assert_all_requests_are_fired=False,
                                           real_adapter_send=send)
        self.rsps.add_passthru(emulator.url)

    def script(self, request, *outcomes, then_pass=True):
        """Answer `request` with `outcomes` in turn (None: let it through),
        then let every later one through (or repeat the last outcome)."""
        method, url = request
        for outcome in outcomes:
            if outcome is None:
                self.rsps.add(responses.PassthroughResponse(method, url))
            elif isinstance(outcome, BaseException):
                self.rsps.add(method, url, body=outcome)
            else:
                status, message = outcome if isinstance(outcome, tuple) else (outcome, "injected")
                self.rsps.add(method, url, status=status, headers={self.INJECTED: "1"},
                              json={"error": {"code": status, "message": message}})
        if then_pass:
            self.rsps.add(responses.PassthroughResponse(method, url))

    def _injected(self):
        for call in self.rsps.calls:
            if isinstance(call.response, BaseException) or self.INJECTED in call.response.headers:
                yield call.request

    def count(self, request):
        method, url = request
        return sum(1 for r in [*self.sent, *self._injected()]
                   if r.method == method and url.match(r.url))

    def bodies(self, request):
        """Bodies of the matching requests the emulator received."""
        method, url = request
        return [r.body for r in self.sent if r.method == method and url.match(r.url)]


@pytest.fixture
def wire(gcs_emulator):
    w = Wire(gcs_emulator)
    with w.rsps:
        yield w


def stored(emulator, bucket, key):
    """The object's bytes as the emulator holds them, or None."""
    return emulator.content(bucket, key)


# -- uploads --------------------------------------------------------------------


def test_md5_travels_with_the_upload_for_the_server_to_check(driver, wire):
    small, large = os.urandom(1000), os.urandom(CHUNK_SIZE + 1000)
    put(driver, blob_key(small), small)
    put(driver, blob_key(large), large)
    # one-request upload, then the start of a resumable one: both carry the
    # MD5 in the object's metadata, which Cloud Storage checks on arrival
    first, second = wire.bodies(wire.UPLOAD)
    assert f'"md5Hash": "{md5_b64(small)}"'.encode() in first
    assert json.loads(second)["md5Hash"] == md5_b64(large)


def test_server_refusing_the_md5_is_an_integrity_error(driver, wire, gcs_emulator, gcs_bucket):
    data = b"bytes mangled on the way"
    wire.script(wire.UPLOAD, (400, "Provided MD5 hash doesn't match calculated MD5 hash"),
                then_pass=False)
    with pytest.raises(IntegrityError, match="refused"):
        put(driver, blob_key(data), data)
    assert wire.count(wire.UPLOAD) == 1  # retrying would send the same bytes again
    assert stored(gcs_emulator, gcs_bucket, blob_key(data)) is None


def test_same_content_is_not_uploaded_twice(driver, wire, gcs_emulator, gcs_bucket):
    data = os.urandom(5000)
    put(driver, blob_key(data), data)
    generation = gcs_emulator.metadata(gcs_bucket, blob_key(data))["generation"]
    put(driver, blob_key(data), data)
    assert wire.count(wire.UPLOAD) == 1
    assert gcs_emulator.metadata(gcs_bucket, blob_key(data))["generation"] == generation


def test_existing_object_with_a_wrong_md5_is_replaced(driver, gcs_emulator, gcs_bucket):
    data = os.urandom(4000)
    key = blob_key(data)
    gcs_emulator.put_raw(gcs_bucket, key, data[:1000])  # a fragment of a broken upload
    put(driver, key, data)
    assert stored(gcs_emulator, gcs_bucket, key) == data
    assert gcs_emulator.metadata(gcs_bucket, key)["md5Hash"] == md5_b64(data)


def test_lost_race_with_the_same_content_is_success(driver, wire, gcs_emulator, gcs_bucket):
    data = os.urandom(3000)
    key = blob_key(data)
    # another instance stores the same layer between our look and our write
    theirs = gcs_emulator.put_raw(gcs_bucket, key, data)["generation"]
    wire.script(wire.METADATA, 404)
    before = wire.count(wire.UPLOAD)
    put(driver, key, data)  # the emulator answers our write with a real 412
    assert wire.count(wire.UPLOAD) - before == 1
    assert gcs_emulator.metadata(gcs_bucket, key)["generation"] == theirs
    assert stored(gcs_emulator, gcs_bucket, key) == data


def test_lost_race_with_a_broken_object_replaces_it(driver, wire, gcs_emulator, gcs_bucket):
    data = os.urandom(3000)
    key = blob_key(data)
    gcs_emulator.put_raw(gcs_bucket, key, b"half a layer")
    wire.script(wire.METADATA, 404)
    before = wire.count(wire.UPLOAD)
    put(driver, key, data)
    assert wire.count(wire.UPLOAD) - before == 2  # refused with 412, then replaced
    assert stored(gcs_emulator, gcs_bucket, key) == data


def test_503_then_success(driver, wire, gcs_emulator, gcs_bucket):
    data = os.urandom(2000)
    wire.script(wire.UPLOAD, 503, 503)
    put(driver, blob_key(data), data)
    assert wire.count(wire.UPLOAD) == 3
    assert stored(gcs_emulator, gcs_bucket, blob_key(data)) == data


def test_reset_mid_upload_starts_over_and_stores_the_whole_layer(driver, wire, gcs_emulator,
                                                                gcs_bucket):
    data = os.urandom(2 * CHUNK_SIZE + 1000)  # three chunks of a resumable upload
    wire.script(wire.CHUNK, None, reset())  # the first chunk arrives, the second is cut off
    put(driver, blob_key(data), data)
    assert wire.count(wire.UPLOAD) == 2
    assert stored(gcs_emulator, gcs_bucket, blob_key(data)) == data


def test_timeouts_and_429_on_lookups_are_retried(driver, wire):
    data = os.urandom(100)
    put(driver, blob_key(data), data)
    wire.script(wire.METADATA, requests.ReadTimeout("read timed out"), 429, 502)
    assert driver.exists(blob_key(data))
    assert wire.count(wire.METADATA) >= 4


def test_failures_that_outlast_the_retry_time_are_storage_unavailable(driver, wire,
                                                                     gcs_emulator, gcs_bucket):
    data = os.urandom(CHUNK_SIZE + 1)
    wire.script(wire.CHUNK, 503, then_pass=False)  # every chunk, forever
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as info:
        put(driver, blob_key(data), data)
    elapsed = time.monotonic() - started
    assert RETRY_SECONDS <= elapsed < RETRY_SECONDS + 5
    assert f"Google Cloud Storage bucket {gcs_bucket}" in str(info.value)
    assert "503" in str(info.value)
    assert wire.count(wire.UPLOAD) >= 3
    assert stored(gcs_emulator, gcs_bucket, blob_key(data)) is None


def test_resets_until_the_end_leave_nothing_under_the_key(driver, wire, gcs_emulator,
                                                         gcs_bucket):
    data = os.urandom(2 * CHUNK_SIZE)
    wire.script(wire.CHUNK, reset(), then_pass=False)  # every chunk, forever
    with pytest.raises(StorageUnavailable, match="connection reset"):
        put(driver, blob_key(data), data)
    assert stored(gcs_emulator, gcs_bucket, blob_key(data)) is None


def test_access_denied_fails_at_once(driver, wire):
    wire.script(wire.METADATA, 403, then_pass=False)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="access denied"):
        driver.exists("manifests/x")
    assert time.monotonic() - started < 2  # no backoff: retrying cannot help
    assert wire.count(wire.METADATA) == 1


def test_unreachable_storage_is_storage_unavailable(gcs_bucket):
    from tests.server import free_port
    dead = GCSStorage(gcs_bucket, endpoint=f"http://127.0.0.1:{free_port()}", retry_seconds=1)
    with pytest.raises(StorageUnavailable, match="Google Cloud Storage"):
        dead.read("manifests/x")


def test_source_changing_under_the_upload_leaves_nothing(driver, gcs_emulator, gcs_bucket):
    """The emulator does not check MD5s as Cloud Storage does; the driver
    compares what the server says it stored and takes a mismatch back."""
    data = os.urandom(5000)

    class ChangesOnSecondPass(io.BytesIO):
        passes = 0

        def seek(self, pos, whence=0):
            if pos == 0 and whence == 0:
                self.passes += 1
                if self.passes == 2:
                    self.getbuffer()[10] ^= 0xFF
            return super().seek(pos, whence)

    with pytest.raises(IntegrityError):
        driver.put(blob_key(data), ChangesOnSecondPass(data), size=len(data), md5=md5(data))
    assert stored(gcs_emulator, gcs_bucket, blob_key(data)) is None


def test_large_layers_are_streamed_not_held_in_memory(driver, tmp_path, gcs_emulator,
                                                      gcs_bucket):
    size = 6 * CHUNK_SIZE
    path = tmp_path / "layer"
    digest, check = hashlib.sha256(), hashlib.md5()
    with open(path, "wb") as f:
        for _ in range(size // (1 << 20)):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            check.update(chunk)
            f.write(chunk)
    key = keys.blob("sha256:" + digest.hexdigest())
    tracemalloc.start()
    try:
        with open(path, "rb") as f:
            driver.put(key, f, size=size, md5=check.hexdigest())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * CHUNK_SIZE, f"peak {peak >> 20} MiB for a {size >> 20} MiB layer"
    assert gcs_emulator.metadata(gcs_bucket, key)["md5Hash"] == base64.b64encode(
        check.digest()).decode()


def test_unseekable_sources_are_spooled(driver, gcs_emulator, gcs_bucket):
    data = os.urandom(3 << 20)
    r, w = os.pipe()

    def feed():
        with os.fdopen(w, "wb") as out:
            out.write(data)
    threading.Thread(target=feed).start()
    with os.fdopen(r, "rb") as pipe:
        driver.put(blob_key(data), pipe, size=len(data), md5=md5(data))
    assert stored(gcs_emulator, gcs_bucket, blob_key(data)) == data


# -- reads ----------------------------------------------------------------------


def test_open_seeks_and_reads_across_fetches(driver):
    data = os.urandom(10 << 20)
    put(driver, blob_key(data), data)
    with driver.open(blob_key(data)) as f:
        assert f.read(1 << 20) == data[:1 << 20]
        f.seek(5 * (1 << 20) + 3)
        assert f.read(100) == data[5 * (1 << 20) + 3:5 * (1 << 20) + 103]
        f.seek(-10, io.SEEK_END)
        assert f.read() == data[-10:]
        assert f.read(5) == b""


def test_reads_retry_transient_failures(driver, wire):
    data = os.urandom(1000)
    put(driver, "manifests/record", data)
    wire.script(wire.DOWNLOAD, 500, reset())
    assert driver.read("manifests/record") == data
    wire.script(wire.DOWNLOAD, 503)
    with driver.open("manifests/record") as f:
        f.seek(500)
        assert f.read() == data[500:]


# -- signed URLs ----------------------------------------------------------------


def test_signed_url_points_at_the_endpoint_and_expires_in_minutes(driver, gcs_emulator):
    data = os.urandom(1000)
    put(driver, blob_key(data), data)
    url = driver.url(blob_key(data))
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    assert f"{parts.scheme}://{parts.netloc}" == gcs_emulator.url
    assert query["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256"
    assert 60 <= int(query["X-Goog-Expires"]) <= 900
    assert query["X-Goog-Credential"].startswith("registry@test-project.iam.gserviceaccount.com/")
    assert requests.get(url, timeout=10).content == data
    assert requests.get(url, headers={"Range": "bytes=10-19"}, timeout=10).content == data[10:20]


def test_no_signing_credentials_means_no_url(gcs_emulator, gcs_bucket):
    driver = GCSStorage(gcs_bucket, endpoint=gcs_emulator.url)
    put(driver, "manifests/m", b"{}")
    assert driver.url("manifests/m") is None


def iam_credentials(email):
    """Instance credentials with a token already in hand, as on Compute Engine."""
    import datetime
    from google.auth import compute_engine
    creds = compute_engine.Credentials(service_account_email=email)
    creds.token = "instance-token"
    creds.expiry = datetime.datetime.utcnow() + datetime.timedelta(hours=1)
    return creds


def test_without_a_key_urls_are_signed_by_iam_signblob(gcs_emulator, gcs_bucket, wire):
    email = "registry@test-project.iam.gserviceaccount.com"
    driver = GCSStorage(gcs_bucket, endpoint=gcs_emulator.url, credentials=iam_credentials(email))
    signature = b"signed-by-iam"
    # IAM cannot run here: answer signBlob as Google does
    wire.rsps.add("POST", f"https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/"
                  f"{email}:signBlob?alt=json",
                  json={"keyId": "k1", "signedBlob": base64.b64encode(signature).decode()})
    url = driver.url("manifests/anything")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert query["X-Goog-Signature"] == signature.hex()
    sign_call = [c for c in wire.rsps.calls if "signBlob" in c.request.url][0]
    assert sign_call.request.headers["Authorization"] == "Bearer instance-token"


def test_iam_refusing_to_sign_means_streaming(gcs_emulator, gcs_bucket, wire):
    email = "registry@test-project.iam.gserviceaccount.com"
    driver = GCSStorage(gcs_bucket, endpoint=gcs_emulator.url, credentials=iam_credentials(email))
    wire.rsps.add("POST", re.compile(r"https://iamcredentials\.googleapis\.com/.*"), status=403,
                  json={"error": {"code": 403, "message": "iam.serviceAccounts.signBlob denied"}})
    assert driver.url("manifests/anything") is None


# -- collection -----------------------------------------------------------------


def test_deletes_are_conditional_on_what_the_listing_saw(driver, wire, gcs_emulator, gcs_bucket):
    """Google enforces these preconditions; fake-gcs-server does not, so
    what the driver sends, and how it takes a 412, are checked here."""
    data = b"judged garbage"
    key = blob_key(data)
    put(driver, key, data)
    [info] = driver.list("layers/")
    generation, metageneration = info.version.split(":")
    base = re.escape(gcs_emulator.url)
    delete = ("DELETE", re.compile(base + r"/storage/v1/b/[^/]+/o/[^/?]+(\?.*)?$"))
    wire.script(delete, (412, "conditionNotMet"), then_pass=False)
    assert driver.delete_if(key, info.version) is False
    assert stored(gcs_emulator, gcs_bucket, key) == data
    [sent] = [c.request for c in wire.rsps.calls if c.request.method == "DELETE"]
    query = dict(p.split("=") for p in sent.url.split("?", 1)[1].split("&"))
    assert (query["ifGenerationMatch"], query["ifMetagenerationMatch"]) == (
        generation, metageneration)


def test_marking_used_sets_custom_time(driver, gcs_emulator, gcs_bucket):
    import datetime
    data = b"reused layer"
    key = blob_key(data)
    put(driver, key, data)
    assert driver.mark_used(key)
    meta = driver._bucket.get_blob(key)
    assert meta.custom_time is not None
    age = datetime.datetime.now(datetime.timezone.utc) - meta.custom_time
    assert abs(age.total_seconds()) < 60
