import gzip
import hashlib
import io
import os
import tarfile

import pytest

from concurrent.futures import ThreadPoolExecutor

from builders.layers import blocks, tarball
from builders.layers.compress import KINDS, NONE, Compression


def make_tree(root):
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    os.chmod(root / "bin" / "tool", 0o755)
    (root / "data").write_bytes(os.urandom(300_000))
    os.link(root / "data", root / "data-link")
    os.symlink("bin/tool", root / "tool-link")
    (root / "empty").mkdir()
    os.chmod(root / "data", 0o444)


def write(paths, compression=Compression()):
    out = io.BytesIO()
    blob = tarball.write_store_layer(paths, out, compression)
    return blob, out.getvalue()


EVERY_COMPRESSOR = [Compression(kind, level) for kind in KINDS
                    for level in (KINDS[kind].levels[0], KINDS[kind].default)]


@pytest.mark.parametrize("compression", EVERY_COMPRESSOR, ids=str)
def test_layer_hashes_match_its_bytes(tmp_path, compression):
    root = tmp_path / "store" / "abc-pkg"
    make_tree(root)
    # more than one compression block, so blocks are chained
    with open(root / "big", "wb") as f:
        f.write(os.urandom(tarball.BLOCK) + bytes(tarball.BLOCK) + b"tail" * 1000)
    blob, data = write([str(root)], compression)
    assert blob.size == len(data)
    assert blob.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert blob.md5 == hashlib.md5(data).hexdigest()
    assert blob.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest()


def test_entries_are_sorted_and_normalised(tmp_path):
    root = tmp_path / "store" / "abc-pkg"
    make_tree(root)
    _, data = write([str(root)])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        prefix = str(root).lstrip("/")
        names = [m.name for m in members]
        # parents first, then depth-first in name order
        assert names.index(prefix) < names.index(prefix + "/bin") < names.index(prefix + "/bin/tool")
        own = [n for n in names if n.startswith(prefix + "/")]
        assert own == [prefix + "/" + n for n in
                       ["bin", "bin/tool", "data", "data-link", "empty", "tool-link"]]
        by = {m.name[len(prefix) + 1:]: m for m in members if m.name.startswith(prefix + "/")}
        assert all(m.mtime == tarball.MTIME and m.uid == 0 and m.gid == 0 and m.uname == ""
                   for m in members)
        assert by["bin/tool"].mode == 0o755 and by["data"].mode == 0o444
        assert by["empty"].isdir()
        assert by["tool-link"].issym() and by["tool-link"].linkname == "bin/tool"
        assert by["data-link"].islnk() and by["data-link"].linkname == prefix + "/data"
        assert tar.extractfile(prefix + "/bin/tool").read() == b"#!/bin/sh\necho tool\n"


@pytest.mark.parametrize("compression", EVERY_COMPRESSOR, ids=str)
def test_same_paths_give_identical_bytes(tmp_path, compression):
    root = tmp_path / "store" / "abc-pkg"
    make_tree(root)
    _, first = write([str(root)], compression)
    os.utime(root / "bin" / "tool", (12345, 12345))  # mtimes do not leak in
    _, second = write([str(root)], compression)
    assert first == second
    # a gzip header with no flags (so no file name) and mtime 0
    assert first[:8] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00"


def test_the_tar_stream_does_not_depend_on_the_compressor(tmp_path):
    root = tmp_path / "store" / "abc-pkg"
    make_tree(root)
    blobs = [write([str(root)], c)[0] for c in EVERY_COMPRESSOR]
    assert len({b.diff_id for b in blobs}) == 1
    assert len({b.digest for b in blobs}) == len(blobs)


def test_a_tar_stream_like_tarfile_writes(tmp_path):
    # the same bytes `tarfile` makes for the same entries, so diff_ids made
    # by earlier versions still describe the same layers
    import tarfile
    root = tmp_path / "store" / "abc-pkg"
    make_tree(root)
    blob, _ = write([str(root)])
    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def norm(ti):
            ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = tarball.MTIME, 0, 0, "", ""
            if ti.issym():
                ti.mode = 0o777
            return ti
        parts = str(root).lstrip("/").split("/")
        for i in range(1, len(parts)):
            ti = tarfile.TarInfo("/".join(parts[:i]))
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(norm(ti))
        tar.add(str(root), arcname=str(root).lstrip("/"), filter=norm, recursive=False)
        for name in ["bin", "bin/tool", "data", "data-link", "empty", "tool-link"]:
            tar.add(str(root / name), arcname=str(root / name).lstrip("/"), filter=norm,
                    recursive=False)
    assert blob.diff_id == "sha256:" + hashlib.sha256(expected.getvalue()).hexdigest()


def test_tree_layer(tmp_path):
    tree = {"bin": ("dir", 0o755), "bin/hello": ("symlink", "/nix/store/x-hello/bin/hello"),
            "tmp": ("dir", 0o1777)}
    out = io.BytesIO()
    blob = tarball.write_tree_layer(tree, out, Compression())
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        m = {x.name: x for x in tar.getmembers()}
    assert m["tmp"].mode == 0o1777 and m["tmp"].isdir()
    assert m["bin/hello"].linkname == "/nix/store/x-hello/bin/hello"
    assert blob.size == len(out.getvalue())


def test_memory_does_not_hold_the_layer(tmp_path):
    # a large file goes through in chunks: the writer never buffers it whole
    import tracemalloc
    root = tmp_path / "store" / "big-pkg"
    root.mkdir(parents=True)
    with open(root / "big", "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    tracemalloc.start()
    with open(os.devnull, "wb") as out:
        tarball.write_store_layer([str(root)], out, Compression())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # the blocks waiting or being compressed, and their output: a few per
    # core, not the layer's 64
    assert peak < (2 * blocks.PENDING + 8) * blocks.BLOCK


def pinned_tree():
    """A tree layer whose tar stream spans several blocks, the same on every machine."""
    tree = {"pins": ("dir", 0o755)}
    h = b"pin"
    for i in range(12000):
        h = hashlib.sha256(h).digest()
        tree[f"pins/link-{i:05d}"] = ("symlink", h.hex() + "/" + h.hex()[:30])
    return tree


# Made by the writer before its blocks were compressed in parallel: the
# bytes must not change, or every stored layer would be made anew (and
# restoring one from its source would fail).
PINNED_DIFF_ID = "sha256:efde06f5ceb8a1b6657686da3d7ab6fd81fc628b9ca396caf30dd675105bb0e4"
PINNED = {
    "isal -1": "sha256:dd61db92fc9e424bc3a6d31ef32d7861410a1cf5834b1b2adb9f05c0929e5adc",
    "zlib -6": "sha256:2563d4c5c7d15d585687dd6fe6779cc9845628c8cecb1fb8a812a404a99ef57e",
    "zlib-ng -1": "sha256:541554c876bf41f4f44669e95bd9548e17cecb3686c5068140e78c5e2f962ad4",
    "none": PINNED_DIFF_ID,
}


@pytest.mark.parametrize("compression", [Compression(), Compression("zlib", 6),
                                         Compression("zlib-ng", 1), Compression(NONE)], ids=str)
def test_layer_digests_are_pinned(compression):
    tree = pinned_tree()
    with ThreadPoolExecutor(2) as pool:
        for _ in range(2):  # a pool shared with another layer changes nothing
            out = io.BytesIO()
            other = pool.submit(tarball.write_tree_layer, tree, io.BytesIO(), compression,
                                pool=pool)
            blob = tarball.write_tree_layer(tree, out, compression, pool=pool)
            assert other.result() == blob
            assert blob.digest == PINNED[str(compression)]
            assert blob.diff_id == PINNED_DIFF_ID
            assert blob.digest == "sha256:" + hashlib.sha256(out.getvalue()).hexdigest()
    alone = tarball.write_tree_layer(tree, io.BytesIO(), compression)
    assert alone.digest == PINNED[str(compression)]


def test_a_plain_layer_is_its_tar_stream(tmp_path):
    root = tmp_path / "store" / "abc-pkg"
    make_tree(root)
    blob, data = write([str(root)], Compression(NONE))
    gz, gz_data = write([str(root)])
    assert blob.digest == blob.diff_id == gz.diff_id
    assert not blob.compressed and gz.compressed
    assert blob.size == blob.tar_size == len(data) == gz.tar_size
    assert data == gzip.decompress(gz_data)
    assert blob.md5 == hashlib.md5(data).hexdigest()


def test_md5_only_when_asked(tmp_path):
    root = tmp_path / "store" / "abc-pkg"
    make_tree(root)
    blob = tarball.write_store_layer([str(root)], io.BytesIO(), Compression(), md5=False)
    assert blob.md5 is None


def test_a_failed_layer_leaves_no_thread_behind(tmp_path):
    import threading
    root = tmp_path / "store" / "abc-pkg"
    make_tree(root)
    before = set(threading.enumerate())
    for compression in (Compression(), Compression("zlib")):
        with pytest.raises(FileNotFoundError):
            write([str(root), str(tmp_path / "store" / "gone")], compression)
    assert not set(threading.enumerate()) - before


def test_a_file_cut_short_while_it_is_read_fails_the_layer(tmp_path, monkeypatch):
    """A store path changed under the registry (it never should be) makes
    no layer whose tar header promises bytes it does not hold."""
    root = tmp_path / "abc-cut"
    make_tree(root)
    walk = tarball._walk

    def cutting(path):
        for entry, st in walk(path):
            if entry.endswith("/data"):
                os.truncate(entry, 1000)  # after its size was taken
            yield entry, st
    monkeypatch.setattr(tarball, "_walk", cutting)
    with pytest.raises(OSError, match="shrank while it was being read"):
        write([str(root)])
