"""Layers stored: gzip where it pays, plain tar where it does not."""
import gzip
import hashlib
import io
import json
import os
import tarfile

from builders.image import manifest
from builders.layers.layerstore import PLAIN_ABOVE, LayerStore
from storage import FilesystemStorage, keys


def store_path(tmp_path, name, data):
    root = tmp_path / "store" / name
    (root / "share").mkdir(parents=True)
    (root / "share" / "data").write_bytes(data)
    return str(root)


def blob_bytes(storage, digest):
    with storage.open(keys.blob(digest)) as f:
        return f.read()


def test_incompressible_layers_are_plain_tar_and_the_rest_gzip(tmp_path):
    storage = FilesystemStorage(str(tmp_path / "storage"))
    store = LayerStore(storage, workers=2)
    noise = store_path(tmp_path, "aaa-noise", os.urandom(3 << 20))
    text = store_path(tmp_path, "bbb-text", b"".join(b"%d\n" % i for i in range(400_000)))
    plain, packed, links = store.store_layers([(noise,), (text,)], {"tmp": ("dir", 0o1777)})

    assert plain["uncompressed"] is True and plain["digest"] == plain["diff_id"]
    data = blob_bytes(storage, plain["digest"])
    assert len(data) == plain["size"]
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        assert tar.getmember(noise.lstrip("/") + "/share/data").size == 3 << 20
    source = json.loads(storage.read(keys.blob_source(plain["digest"])))
    assert source["compression"] == ["none", 0]

    for layer in (packed, links):
        assert "uncompressed" not in layer
        data = blob_bytes(storage, layer["digest"])
        assert data[:2] == b"\x1f\x8b" and len(data) <= PLAIN_ABOVE * len(gzip.decompress(data))
        assert layer["diff_id"] == "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest()

    # the manifests name each layer's media type, in both formats
    config = {"digest": "sha256:" + "0" * 64, "size": 2}
    for media_type, (tar_type, gzip_type) in {
            manifest.DOCKER_MANIFEST: (manifest.DOCKER_LAYER_TAR, manifest.DOCKER_LAYER),
            manifest.OCI_MANIFEST: (manifest.OCI_LAYER_TAR, manifest.OCI_LAYER)}.items():
        doc = json.loads(manifest.render(media_type, config, [plain, packed, links]))
        assert [l["mediaType"] for l in doc["layers"]] == [tar_type, gzip_type, gzip_type]


def test_a_lost_plain_layer_is_made_again_the_same(tmp_path):
    storage = FilesystemStorage(str(tmp_path / "storage"))
    noise = store_path(tmp_path, "aaa-noise", os.urandom(1 << 20))
    layer = LayerStore(storage, workers=2).store_layers([(noise,)], {})[0]
    before = blob_bytes(storage, layer["digest"])
    os.unlink(os.path.join(storage.root, keys.blob(layer["digest"])))
    # another process, with no memory of it
    assert LayerStore(storage, workers=2).restore_blob(layer["digest"])
    assert blob_bytes(storage, layer["digest"]) == before


def test_layers_are_written_once_into_storage(tmp_path):
    # no copy of the layer is left behind in storage's temporary folder
    storage = FilesystemStorage(str(tmp_path / "storage"))
    text = store_path(tmp_path, "bbb-text", b"text\n" * 500_000)
    noise = store_path(tmp_path, "aaa-noise", os.urandom(1 << 20))
    LayerStore(storage, workers=2).store_layers([(text,), (noise,)], {})
    assert os.listdir(storage.tmp) == []


def test_the_biggest_layers_start_first_and_come_back_in_order(tmp_path, monkeypatch):
    """With the store paths' sizes, a big layer is not left to start last
    and run alone on a core while the others have nothing to do."""
    storage = FilesystemStorage(str(tmp_path / "storage"))
    small = store_path(tmp_path, "aaa-small", b"s" * 1000)
    big = store_path(tmp_path, "bbb-big", b"b" * 200_000)
    middle = store_path(tmp_path, "ccc-middle", b"m" * 50_000)
    store = LayerStore(storage, workers=1)  # one at a time: the order is the start order
    started = []
    make = store._store_paths
    monkeypatch.setattr(store, "_store_paths", lambda paths: started.append(paths) or make(paths))
    groups = [(small,), (big,), (middle,)]
    sizes = {small: 1000, big: 200_000, middle: 50_000}
    layers = store.store_layers(groups, {}, sizes=sizes)
    assert started == [(big,), (middle,), (small,)]
    # each layer where its group is, whatever order they were made in
    assert [json.loads(storage.read(keys.blob_source(layer["digest"])))["paths"]
            for layer in layers[:3]] == [[small], [big], [middle]]
    # without sizes, their own order
    started.clear()
    store.store_layers(groups, {})
    assert started == groups
