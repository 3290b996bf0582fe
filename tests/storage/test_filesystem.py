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


def _modes(root):
    """Mode of every folder and file under root (the root included), by kind."""
    folders, files = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        folders[dirpath] = os.stat(dirpath).st_mode & 0o7777
        for name in filenames:
            path = os.path.join(dirpath, name)
            files[path] = os.stat(path).st_mode & 0o7777
    return folders, files


def _fill(driver):
    data = os.urandom(100)
    driver.put(blob(data), io.BytesIO(data), size=len(data), md5=md5(data))
    driver.put_bytes("manifests/some/image", b"{}")
    assert driver.put_if("claims/x", b"{}", version=None)


@pytest.mark.parametrize("group,folder_mode,file_mode", [
    (None, 0o755, 0o644),          # anyone may read: nginx's workers run as nobody
    (os.getgid(), 0o2750, 0o640),  # NIXERY_STORAGE_GROUP: its members only
])
def test_files_are_readable_by_a_web_server_whatever_the_umask(tmp_path, group, folder_mode,
                                                              file_mode):
    old = os.umask(0o077)
    try:
        _fill(FilesystemStorage(str(tmp_path / "s"), group=group))
    finally:
        os.umask(old)
    folders, files = _modes(tmp_path / "s")
    assert set(folders.values()) == {folder_mode}
    stored = {p: m for p, m in files.items() if "/.locks/" not in p}
    assert len(stored) == 3 and set(stored.values()) == {file_mode}
    assert not any(m & 0o002 for m in list(folders.values()) + list(files.values()))
    if group is not None:
        assert all(os.stat(p).st_gid == group for p in list(folders) + list(stored))


def test_a_blob_written_closed_by_an_earlier_version_is_opened_up_when_read(tmp_path):
    driver = FilesystemStorage(str(tmp_path / "s"))
    data = os.urandom(100)
    driver.put(blob(data), io.BytesIO(data), size=len(data), md5=md5(data))
    path = tmp_path / "s" / blob(data)
    os.chmod(path, 0o600)
    with FilesystemStorage(str(tmp_path / "s")).open(blob(data)) as f:
        assert f.read() == data
    assert os.stat(path).st_mode & 0o7777 == 0o644


def test_closed_folder_names_where_a_web_server_cannot_pass(tmp_path):
    driver = FilesystemStorage(str(tmp_path / "outer" / "storage"))
    chain = [str(p) for p in reversed((tmp_path / "outer" / "storage").parents)]
    chain.append(driver.root)
    modes = {p: os.stat(p).st_mode & 0o7777 for p in chain}
    os.chmod(tmp_path / "outer", 0o700)
    try:
        closed = driver.closed_folder()
        # the first folder on the way that others cannot enter (pytest's
        # own temporary folders are 0700 too)
        i = chain.index(closed)
        assert not os.stat(closed).st_mode & 0o001
        assert all(os.stat(p).st_mode & 0o001 for p in chain[:i])
        for p in chain[i:]:
            os.chmod(p, os.stat(p).st_mode | 0o005)
        assert driver.closed_folder() is None
    finally:
        for p, mode in modes.items():
            os.chmod(p, mode)


def test_unchanged_says_whether_the_checked_file_is_still_there(tmp_path):
    driver = FilesystemStorage(str(tmp_path / "s"))
    key = blob(b"layer bytes")
    path = tmp_path / "s" / key
    driver.put(key, io.BytesIO(b"layer bytes"), size=11, md5=md5(b"layer bytes"))
    driver.open(key).close()  # checked
    unchanged = driver.unchanged(key)
    assert unchanged() and unchanged()
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # touched
    assert not unchanged()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert unchanged()
    replaced = tmp_path / "other"
    replaced.write_bytes(b"layer bytes")
    os.utime(replaced, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replaced, path)  # same bytes, size and time: another file
    assert not unchanged()
    path.unlink()
    assert not unchanged()
