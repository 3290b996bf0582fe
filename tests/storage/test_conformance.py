"""One suite every storage driver passes."""
import hashlib
import io
import os

import pytest
import requests

from storage import FilesystemStorage, IntegrityError, ObjectNotFound, StorageError, keys
from tests.conftest import at_once


@pytest.fixture(params=["filesystem", "gcs", "s3"])
def driver(request, tmp_path):
    return make_driver(request, request.param, tmp_path)


@pytest.fixture(params=["gcs", "s3"])
def bucket_driver(request, tmp_path):
    """The drivers that upload a spool with the writer's MD5 (the
    filesystem driver renames the writer's own file into place)."""
    return make_driver(request, request.param, tmp_path)


def make_driver(request, name, tmp_path):
    if name == "filesystem":
        return FilesystemStorage(str(tmp_path / "store"))
    if name == "gcs":
        from storage.gcs import GCSStorage
        emulator = request.getfixturevalue("gcs_emulator")
        return GCSStorage(request.getfixturevalue("gcs_bucket"), endpoint=emulator.url,
                          credentials_file=request.getfixturevalue("gcs_key"),
                          retry_seconds=5)
    if name == "s3":
        from storage.s3 import S3Storage
        server = request.getfixturevalue("s3_server")
        return S3Storage(request.getfixturevalue("s3_bucket"), client=server.client())
    raise ValueError(name)


def blob(data):
    return keys.blob("sha256:" + hashlib.sha256(data).hexdigest())


def md5(data):
    return hashlib.md5(data).hexdigest()


def test_put_then_read_back(driver):
    data = os.urandom(3 << 20)
    key = blob(data)
    assert not driver.exists(key) and driver.read(key) is None
    driver.put(key, io.BytesIO(data), size=len(data), md5=md5(data))
    assert driver.exists(key)
    with driver.open(key) as f:
        assert f.seek(0, os.SEEK_END) == len(data)
        f.seek(0)
        assert f.read() == data
        f.seek(100)
        assert f.read(10) == data[100:110]
    url = driver.url(key)
    if url is not None:
        # what a client gets when the registry redirects it there
        assert requests.get(url, timeout=30).content == data


def spooled(driver, data):
    """Write `data` into the driver's spool as a layer writer does: the
    hashes computed as it writes, the MD5 only if the driver wants it."""
    spool = driver.spool()
    spool.file.write(data)
    return spool, {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                   "md5": md5(data) if driver.wants_md5 else None}


def test_spooled_put_then_read_back(driver):
    data = os.urandom(3 << 20)
    key = blob(data)
    spool, hashes = spooled(driver, data)
    with spool:
        driver.put_spooled(key, spool, **hashes)
    with driver.open(key) as f:
        assert f.read() == data
    assert driver.size(key) == len(data)
    url = driver.url(key)
    if url is not None:
        assert requests.get(url, timeout=30).content == data


def test_spooled_put_of_other_bytes_leaves_nothing(driver):
    data = os.urandom(1 << 16)
    spool, hashes = spooled(driver, data)
    with spool, pytest.raises(IntegrityError):
        driver.put_spooled(blob(b"other bytes"), spool, **hashes)
    assert not driver.exists(blob(b"other bytes")) and not driver.exists(blob(data))
    spool, hashes = spooled(driver, data)
    with spool, pytest.raises(IntegrityError):
        driver.put_spooled(blob(data), spool, **dict(hashes, size=len(data) + 1))
    assert not driver.exists(blob(data))


def test_spooled_bytes_that_are_not_what_the_writer_hashed_leave_nothing(bucket_driver):
    # a bucket driver does not read the spool again: the MD5 the writer
    # computed goes with the upload, and the bucket's check refuses bytes
    # that changed since (the filesystem driver keeps the file it has)
    driver = bucket_driver
    assert driver.wants_md5
    data = os.urandom(1 << 16)
    spool, hashes = spooled(driver, data)
    with spool, pytest.raises(IntegrityError):
        driver.put_spooled(blob(data), spool, **dict(hashes, md5=md5(b"other bytes")))
    assert not driver.exists(blob(data))


def test_a_spool_not_stored_leaves_nothing(driver, tmp_path):
    spool, _ = spooled(driver, b"half a layer")
    with spool:
        pass
    assert not list(driver.list(""))
    if isinstance(driver, FilesystemStorage):
        assert not os.listdir(driver.tmp)


def test_missing_object(driver):
    with pytest.raises(ObjectNotFound):
        driver.open("manifests/nothing")
    for key in ("manifests/nothing", blob(b"never stored")):
        with pytest.raises(ObjectNotFound):
            driver.size(key)
    assert driver.read("manifests/nothing") is None


def test_size_without_reading(driver):
    data = os.urandom(100_000)
    for key in (blob(data), "manifests/small"):
        driver.put(key, io.BytesIO(data), size=len(data), md5=md5(data))
        assert driver.size(key) == len(data)
        assert driver.size(key) == len(data)  # checked already, for a blob


def test_wrong_md5_leaves_nothing(driver):
    data = b"layer bytes"
    with pytest.raises(IntegrityError):
        driver.put(blob(data), io.BytesIO(data), size=len(data), md5=md5(b"other"))
    assert not driver.exists(blob(data))


def test_content_must_match_its_digest_key(driver):
    data = b"claimed content"
    key = blob(b"different content")
    with pytest.raises(IntegrityError):
        driver.put(key, io.BytesIO(data), size=len(data), md5=md5(data))
    assert not driver.exists(key)


def test_short_stream_leaves_nothing(driver):
    data = b"0123456789"
    with pytest.raises(IntegrityError):
        driver.put(blob(data), io.BytesIO(data[:5]), size=len(data), md5=md5(data))
    assert not driver.exists(blob(data))


def test_failing_stream_leaves_nothing(driver):
    data = os.urandom(4 << 20)

    class Dies(io.BytesIO):
        def read(self, n=-1):
            if self.tell() > (1 << 20):
                raise ConnectionResetError("gone")
            return super().read(n)
    with pytest.raises((OSError, StorageError)):
        driver.put(blob(data), Dies(data), size=len(data), md5=md5(data))
    assert not driver.exists(blob(data))


def test_rewrite_and_small_objects(driver):
    driver.put_bytes("manifests/k", b"one", "application/json")
    driver.put_bytes("manifests/k", b"two", "application/json")
    assert driver.read("manifests/k") == b"two"


def test_keys_cannot_escape(driver):
    with pytest.raises(ValueError):
        driver.exists("../outside")



def test_conditional_writes_of_small_records(driver):
    key = "claims/k"
    assert driver.read_versioned(key) is None
    assert driver.put_if(key, b"first", version=None)
    assert not driver.put_if(key, b"second", version=None)  # there is one already
    data, version = driver.read_versioned(key)
    assert data == b"first"
    renewed = driver.put_if(key, b"renewed", version=version)
    assert renewed and renewed != version
    assert not driver.put_if(key, b"stale", version=version)  # not at that version now
    data, current = driver.read_versioned(key)
    assert data == b"renewed" and current == renewed
    assert driver.put_if(key, b"again", version=current)
    assert driver.read_versioned(key)[0] == b"again"


def test_of_writers_racing_for_a_record_one_wins(driver):
    written = at_once(6, lambda i: driver.put_if("claims/race", f"writer {i}".encode(),
                                                 version=None))
    wins = [i for i, version in enumerate(written) if version]
    assert len(wins) == 1
    assert driver.read("claims/race") == f"writer {wins[0]}".encode()


# -- what garbage collection needs --------------------------------------------


def test_listing_sizes_times_and_versions(driver):
    import time
    before = time.time() - 5
    a, b = b"first blob", b"second, longer blob"
    for data in (a, b):
        driver.put_bytes(blob(data), data)
    driver.put_bytes("manifests/k1", b"{}", "application/json")
    listed = {i.key: i for i in driver.list("layers/")}
    assert set(listed) == {blob(a), blob(b)}
    assert listed[blob(b)].size == len(b)
    assert all(i.used >= before for i in listed.values())
    assert [i.key for i in driver.list("manifests/")] == ["manifests/k1"]
    assert list(driver.list("nothing-here/")) == []


def test_marking_used_changes_the_version_and_the_time(driver, request):
    import time
    data = b"a layer that a build reuses"
    driver.put_bytes(blob(data), data)
    [seen] = driver.list("layers/")
    time.sleep(1.1)  # some stores keep times to the second
    assert driver.mark_used(blob(data))
    [now] = driver.list("layers/")
    assert now.used > seen.used
    # GCS counts a metadata update in the metageneration; fake-gcs-server
    # does not (tests/storage/test_gcs.py checks what the driver sends)
    if "gcs" not in request.node.name:
        assert now.version != seen.version
    assert driver.read(blob(data)) == data  # the bytes are untouched
    assert driver.mark_used(blob(b"never stored")) is False


def test_conditional_delete(driver, request):
    data = b"garbage"
    driver.put_bytes(blob(data), data)
    [info] = driver.list("layers/")
    assert driver.delete_if(blob(data), info.version)
    assert not driver.exists(blob(data))
    assert driver.delete_if(blob(data), info.version) is False  # gone already
    driver.put_bytes(blob(data), data)
    [again] = driver.list("layers/")
    driver.mark_used(blob(data))
    if "gcs" in request.node.name:
        # fake-gcs-server does not enforce preconditions on deletes:
        # tests/storage/test_gcs.py checks what the driver asks for
        return
    assert driver.delete_if(blob(data), again.version) is False  # used since it was listed
    assert driver.exists(blob(data))
