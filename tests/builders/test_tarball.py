import gzip
import hashlib
import io
import os
import tarfile

from builders import tarball


def make_tree(root):
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    os.chmod(root / "bin" / "tool", 0o755)
    (root / "data").write_bytes(os.urandom(300_000))
    os.link(root / "data", root / "data-link")
    os.symlink("bin/tool", root / "tool-link")
    (root / "empty").mkdir()
    os.chmod(root / "data", 0o444)


def write(paths, level=6):
    out = io.BytesIO()
    blob = tarball.write_store_layer(paths, out, level)
    return blob, out.getvalue()


def test_layer_hashes_match_its_bytes(tmp_path):
    root = tmp_path / "store" / "abc-pkg"
    make_tree(root)
    blob, data = write([str(root)])
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


def test_same_paths_give_identical_bytes(tmp_path):
    root = tmp_path / "store" / "abc-pkg"
    make_tree(root)
    _, first = write([str(root)])
    os.utime(root / "bin" / "tool", (12345, 12345))  # mtimes do not leak in
    _, second = write([str(root)])
    assert first == second


def test_tree_layer(tmp_path):
    tree = {"bin": ("dir", 0o755), "bin/hello": ("symlink", "/nix/store/x-hello/bin/hello"),
            "tmp": ("dir", 0o1777)}
    out = io.BytesIO()
    blob = tarball.write_tree_layer(tree, out)
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
        tarball.write_store_layer([str(root)], out, level=1)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 16 << 20
