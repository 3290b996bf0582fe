"""Storage in a local folder (the default backend)."""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time

from cachetools import LRUCache

from . import filelock
from .access import Access
from .base import ObjectInfo, Storage
from .spool import Spool, StorageFile
from .errors import CorruptObject, IntegrityError, ObjectNotFound, StorageUnavailable

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
STALE_TEMPORARY_SECONDS = 6 * 3600



class FilesystemStorage(Storage):
    """Objects are files under `root`, keys are relative paths.

    Writes go to a temporary file in `root/.tmp` (same file system), are
    verified and fsynced, then renamed into place, so a reader never sees a
    partial object and a crash leaves only temporary files behind.
    """

    name = "filesystem storage"
    wants_md5 = False  # a spooled file is renamed into place as it was written

    def __init__(self, root, *, group: int | None = None):
        self.root = os.path.abspath(root)
        self.group = group
        # files and folders readable by the web server in front (storage/access.py)
        self.access = Access(group)
        self.tmp = os.path.join(self.root, ".tmp")
        self.corrupt = os.path.join(self.root, ".corrupt")
        self.locks = os.path.join(self.root, ".locks")
        # path -> (inode, size, mtime) of files whose digest was checked:
        # a file changed since (truncated, rewritten) is checked again
        self._verified = LRUCache(maxsize=1 << 16)
        self._verified_lock = threading.Lock()
        try:
            self.access.makedirs(self.tmp)
        except OSError as e:
            raise StorageUnavailable(f"cannot create {self.root}: {e.strerror}") from e
        self._remove_stale_temporaries()

    def _remove_stale_temporaries(self):
        # a writer killed mid-write leaves its temporary file; no live write
        # takes this long
        cutoff = time.time() - STALE_TEMPORARY_SECONDS
        for name in os.listdir(self.tmp):
            path = os.path.join(self.tmp, name)
            try:
                if os.stat(path).st_mtime < cutoff:
                    os.unlink(path)
            except FileNotFoundError:
                pass

    def _path(self, key):
        path = os.path.normpath(os.path.join(self.root, key))
        if not path.startswith(self.root + os.sep):
            raise ValueError(f"key outside the storage root: {key!r}")
        return path

    def exists(self, key):
        return os.path.isfile(self._path(key))

    def open(self, key):
        path = self._path(key)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        want = self.expected_sha256(key)
        if want:
            try:
                self._verify(f, path, key, want)
            except BaseException:
                f.close()
                raise
        return f

    def size(self, key):
        # a file checked before and unchanged since needs one stat, not an
        # open, an fstat and a close
        path = self._path(key)
        if self.expected_sha256(key):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                raise ObjectNotFound(key) from None
            if self._checked(path, st):
                return st.st_size
        return super().size(key)

    def unchanged(self, key):
        path = self._path(key)
        with self._verified_lock:
            signature = self._verified.get(path)
        if signature is None:
            return None  # not checked (or not content-addressed): nothing to compare

        def check() -> bool:
            try:
                return _signature(os.stat(path)) == signature
            except OSError:
                return False
        return check

    def _checked(self, path, st) -> bool:
        """Whether the file at `path`, as `st` finds it, is one whose digest was checked."""
        with self._verified_lock:
            return self._verified.get(path) == _signature(st)

    def _verify(self, f, path, key, want):
        st = os.fstat(f.fileno())
        if self._checked(path, st):
            return
        h = hashlib.sha256()
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
        f.seek(0)
        if h.hexdigest() != want:
            self._set_aside(path, key)
            raise CorruptObject(f"{key} does not match its digest and was set aside")
        self.access.open_up(f, path, st)
        with self._verified_lock:
            self._verified[path] = _signature(st)

    def closed_folder(self) -> str | None:
        """The first folder on the way to the root that a web server sending
        the files as another user cannot pass, or None (Access.closed_folder)."""
        return self.access.closed_folder(self.root)

    def _set_aside(self, path, key):
        logger.error("%s in %s is corrupt: its content does not match its digest", key, self.root)
        try:
            self.access.makedirs(self.corrupt)
            os.replace(path, os.path.join(self.corrupt, os.path.basename(path)))
        except FileNotFoundError:
            pass  # another request set it aside first

    @staticmethod
    def _version(path) -> str | None:
        # every write is a new file renamed into place: a new inode
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return f"{st.st_ino}:{st.st_mtime_ns}"

    def _locked(self, key) -> filelock.FileLock:
        """The key's lock, for conditional writes; instances sharing the folder
        (over NFS, say) share it too."""
        self.access.makedirs(self.locks)
        return filelock.acquire(os.path.join(self.locks, hashlib.sha256(key.encode()).hexdigest()),
                                mode=0o644)

    def read_versioned(self, key):
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                return f.read(), f"{st.st_ino}:{st.st_mtime_ns}"
        except FileNotFoundError:
            return None

    def put_if(self, key, data, *, version):
        path = self._path(key)
        with self._locked(key):
            if self._version(path) != version:
                return None
            self.put_bytes(key, data, "application/json")
            return self._version(path)

    def list(self, prefix):
        """Walks the folders under `prefix`; the driver's own folders (`.tmp`,
        `.locks`, `.corrupt`, `.state`) are not objects."""
        top = self._path(prefix.rstrip("/") or ".") if prefix.strip("/") else self.root
        if not os.path.isdir(top):
            return
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                key = os.path.relpath(path, self.root)
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue  # deleted while we walked
                yield ObjectInfo(key, st.st_size, st.st_mtime, f"{st.st_ino}:{st.st_mtime_ns}")

    def mark_used(self, key):
        """Its modification time, under the key's lock (as a delete takes it)."""
        path = self._path(key)
        with self._locked(key):
            try:
                os.utime(path)
            except FileNotFoundError:
                return False
        return True

    def delete_if(self, key, version):
        path = self._path(key)
        with self._locked(key):
            if self._version(path) != version:
                return False
            _unlink(path)
        return True

    def _temporary(self):
        try:
            fd, tmp = tempfile.mkstemp(dir=self.tmp)
        except OSError as e:
            raise StorageUnavailable(f"{self.name}: cannot write to {self.tmp}: {e.strerror}") from e
        try:
            self.access.own(tmp, self.access.file_mode, fd)
        except BaseException:
            os.close(fd)
            _unlink(tmp)
            raise
        return fd, tmp

    def spool(self):
        """A temporary file in `root/.tmp`, on the file system of the
        objects, so that storing it is a rename."""
        fd, tmp = self._temporary()
        return Spool(StorageFile(os.fdopen(fd, "wb"), f"{self.name}: cannot write to {self.tmp}"),
                     tmp)

    def put_spooled(self, key, spool, *, size, sha256, md5=None,
                    content_type="application/octet-stream"):
        """The writer hashed the bytes as it wrote them: they are not read
        again.  Its file is synced and renamed into place, and the digest
        it vouched for counts as checked (open() and size() need not hash it
        in this process while the file stays as it is)."""
        path = self._path(key)
        if spool.path is None or os.path.dirname(spool.path) != self.tmp:
            raise ValueError(f"{self.name} stores only what its own spool() holds")
        self._vouched(key, spool, size, sha256, md5)
        try:
            os.fsync(spool.file.fileno())
            st = os.fstat(spool.file.fileno())
            self.access.makedirs(os.path.dirname(path))
            os.replace(spool.path, path)
        except OSError as e:
            raise StorageUnavailable(f"{self.name}: cannot write {key}: {e.strerror}") from e
        spool.stored = True
        if self.expected_sha256(key):
            with self._verified_lock:
                self._verified[path] = _signature(st)

    def put(self, key, fileobj, *, size, md5, content_type="application/octet-stream"):
        path = self._path(key)
        want_sha = self.expected_sha256(key)
        md5sum, sha = hashlib.md5(), hashlib.sha256()
        fd, tmp = self._temporary()
        try:
            with os.fdopen(fd, "wb") as out:
                remaining = size
                while remaining > 0:
                    chunk = fileobj.read(min(CHUNK, remaining))
                    if not chunk:
                        break
                    remaining -= len(chunk)
                    md5sum.update(chunk)
                    if want_sha:
                        sha.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if remaining:
                raise IntegrityError(f"{key}: got {size - remaining} of {size} bytes")
            if md5sum.hexdigest() != md5:
                raise IntegrityError(f"{key}: MD5 {md5sum.hexdigest()} does not match {md5}")
            if want_sha and sha.hexdigest() != want_sha:
                raise IntegrityError(f"{key}: content has sha256 {sha.hexdigest()}")
            self.access.makedirs(os.path.dirname(path))
            os.replace(tmp, path)
        except OSError as e:
            _unlink(tmp)
            raise StorageUnavailable(f"{self.name}: cannot write {key}: {e.strerror}") from e
        except BaseException:
            _unlink(tmp)
            raise


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _signature(st) -> tuple:
    """What tells a file apart from a changed one (truncated, rewritten)."""
    return st.st_ino, st.st_size, st.st_mtime_ns
