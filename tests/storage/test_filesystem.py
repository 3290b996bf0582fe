"""What only the filesystem driver does (the shared suite is test_conformance.py)."""
import io
import os

import pytest

from storage import CorruptObject, FilesystemStorage
from tests.storage.test_conformance import blob, md5


def test_filesystem_removes_stale_temporaries(tmp_path):
    FilesystemStorage(str(tmp_path / "s"))
    stale = tmp_path / "s" / ".tmp" / "left-by-a-killed-worker"
    fresh = tmp_path / "s" / ".tmp" / "being-written"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    os.utime(stale, (1, 1))
    FilesystemStorage(str(tmp_path / "s"))
    assert not stale.exists() and fresh.exists()


def test_filesystem_never_serves_a_corrupt_blob(tmp_path):
    driver = FilesystemStorage(str(tmp_path / "s"))
    data = os.urandom(1000)
    driver.put(blob(data), io.BytesIO(data), size=len(data), md5=md5(data))
    with driver.open(blob(data)) as f:
        assert f.read() == data
    with open(tmp_path / "s" / blob(data), "r+b") as f:
        f.truncate(10)
    with pytest.raises(CorruptObject):
        driver.open(blob(data))
    assert not driver.exists(blob(data))


@pytest.mark.parametrize("checked_before", [False, True])
def test_filesystem_size_never_vouches_for_a_corrupt_blob(tmp_path, checked_before):
    driver = FilesystemStorage(str(tmp_path / "s"))
    data = os.urandom(1000)
    driver.put(blob(data), io.BytesIO(data), size=len(data), md5=md5(data))
    if checked_before:
        assert driver.size(blob(data)) == len(data)
    path = tmp_path / "s" / blob(data)
    written = path.stat().st_mtime_ns
    with open(path, "r+b") as f:
        f.write(b"\0" * 16)  # the same size
    # a later mtime (set: the clock behind mtime may not have moved yet)
    os.utime(path, ns=(written, written + 1_000_000_000))
    with pytest.raises(CorruptObject):
        driver.size(blob(data))
    assert not driver.exists(blob(data))
