"""Building images into storage: caches, layer reuse, determinism, the budget."""
import collections
import io
import json
import os
import subprocess
import threading
import time

import pytest

from builders.layers import tarball
from builders.errors import (BuildError, BuildFailed, BuildInProgress, BuildInterrupted,
                             BuildTimeout, InvalidImage, PackagesNotFound, PackageUnbuildable,
                             SourceUnavailable)
from builders.image.names import Image
from builders.image.platforms import AMD64
from builders.image.manifest import DOCKER_MANIFEST, OCI_MANIFEST
from builders.build import ImageBuilder
from builders.jobs.claims import Claims
from builders.jobs.failures import Failures
from builders.jobs.jobs import Jobs
from builders.layers.layerstore import LayerStore
from builders.jobs.locks import BuildLocks
from builders.nixbuild.nix import Nix
from builders.layers.popularity import Popularity
from builders.sources.revisions import Revisions
from builders.service import ImageService
from builders.sources.folder import PathSource
from storage import FilesystemStorage, keys
from storage.base import Storage
from tests.conftest import PKGS, drowsy_set, killed_once_set


class CountingStorage(FilesystemStorage):
    """Filesystem storage that notes every call of the interface: (method,
    key); calls the driver makes to itself are part of the one noted."""

    def __init__(self, root):
        super().__init__(root)
        self.calls = []
        self._inside = threading.local()

    @property
    def puts(self):
        return [key for method, key in self.calls if method == "put"]

    def _noted(name, method):
        def noted(self, key, *args, **kwargs):
            outermost = not getattr(self._inside, "depth", 0)
            if outermost:
                self.calls.append((name, key))
            self._inside.depth = getattr(self._inside, "depth", 0) + 1
            try:
                return method(self, key, *args, **kwargs)
            finally:
                self._inside.depth -= 1
        return noted

    exists = _noted("exists", FilesystemStorage.exists)
    open = _noted("open", FilesystemStorage.open)
    read = _noted("read", FilesystemStorage.read)
    read_versioned = _noted("read", FilesystemStorage.read_versioned)
    put = _noted("put", FilesystemStorage.put)
    put_spooled = _noted("put", FilesystemStorage.put_spooled)
    put_if = _noted("put", FilesystemStorage.put_if)
    mark_used = _noted("mark", FilesystemStorage.mark_used)


class CountingNix(Nix):
    """Nix that counts the commands it runs."""

    def __init__(self):
        super().__init__()
        self.runs = 0

    def _run(self, cmd, deadline):
        self.runs += 1
        return super()._run(cmd, deadline)


class SpoolingLikeBuckets(CountingStorage):
    """Filesystem storage that spools what it stores as the bucket drivers
    do (Storage's own spool: the machine's temporary folder), and wants
    the MD5 they want."""

    wants_md5 = True
    spool = Storage.spool
    put_spooled = Storage.put_spooled


def service(root, *, popularity_url=None, max_layers=100, layer_workers=None, pkgs=PKGS,
            pull_wait=120, state=None, platforms=(AMD64,), storage=CountingStorage):
    """An image service on the test package set, as create_app wires one;
    `state` is its machine's own folder (the storage root's by default)."""
    store = storage(root)
    state = state or os.path.join(root, ".state")
    nix = CountingNix()
    layerstore = LayerStore(store, workers=layer_workers)
    return ImageService(
        store, revisions=Revisions(PathSource(str(pkgs)), store, refresh=300),
        failures=Failures(store),
        locks=BuildLocks(os.path.join(state, "locks"), max_builds=2, queue_timeout=30),
        claims=Claims(store), jobs=Jobs(),
        builder=ImageBuilder(store, nix=nix, popularity=Popularity(store, popularity_url),
                             layerstore=layerstore, nix_timeout=120, max_layers=max_layers),
        layerstore=layerstore, nix=nix, nix_timeout=120, pull_wait=pull_wait,
        platforms=platforms)


def manifest_of(record, media_type=DOCKER_MANIFEST):
    return json.loads(record.manifest(media_type))


def digests(record):
    return [l["digest"] for l in manifest_of(record)["layers"]]


def built_path(attr):
    """The store path of a package of the test set (built by then)."""
    done = subprocess.run(["nix-build", str(PKGS), "-A", attr, "--no-out-link"],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


def closure_of(attr):
    done = subprocess.run(["nix-store", "-qR", built_path(attr)],
                          capture_output=True, text=True, check=True)
    return done.stdout.split()


def layer_digest(svc, *paths):
    """The digest of the layer holding exactly `paths`."""
    return tarball.write_store_layer(paths, io.BytesIO(), svc.layerstore.compression).digest


def test_images_sharing_paths_share_layers_and_upload_them_once(tmp_path):
    svc = service(tmp_path)
    git = svc.image(Image.from_name("shell/git"), "latest")
    uploads_before = list(svc.storage.puts)
    htop = svc.image(Image.from_name("shell/htop"), "latest")
    shared = set(digests(git)) & set(digests(htop))
    # the six shell packages and the busybox they all need
    assert len(shared) == 7
    assert layer_digest(svc, built_path("bashInteractive")) in shared
    new_uploads = set(svc.storage.puts) - set(uploads_before)
    assert not {keys.blob(d) for d in shared} & new_uploads


def test_paths_images_share_get_their_own_layer_once_seen_twice(tmp_path):
    svc = service(tmp_path)
    libshared = layer_digest(svc, built_path("libshared"))
    git = svc.image(Image.from_name("git"), "latest")
    # the first image to need libshared keeps it in git's layer ...
    assert libshared not in digests(git)
    assert len(git.layers) == 2
    # ... the second gives it a layer of its own, which the third reuses
    htop = svc.image(Image.from_name("htop"), "latest")
    curl = svc.image(Image.from_name("curl"), "latest")
    assert libshared in digests(htop) and libshared in digests(curl)


def test_derived_popularity_is_kept_in_storage_across_restarts(tmp_path):
    service(tmp_path).image(Image.from_name("git"), "latest")
    counts = json.loads(FilesystemStorage(tmp_path).read(keys.popularity()))["counts"]
    assert counts["libshared-1.0"] == 1 and counts["git-1.0"] == 1 and counts["busybox"] == 1
    again = service(tmp_path)
    htop = again.image(Image.from_name("htop"), "latest")
    # the restarted service knows git needed libshared too
    assert layer_digest(again, built_path("libshared")) in digests(htop)
    counts = json.loads(again.storage.read(keys.popularity()))["counts"]
    assert counts["libshared-1.0"] == 2 and counts["htop-1.0"] == 1


def test_popularity_from_the_url_changes_the_layers(tmp_path):
    url = tmp_path / "popularity.json"
    url.write_text(json.dumps({"libshared-1.0": 40, "busybox": 50, "glibc-2.37": 1000}))
    plain = service(tmp_path / "plain").image(Image.from_name("git"), "latest")
    svc = service(tmp_path / "popular", popularity_url=url.as_uri())
    popular = svc.image(Image.from_name("git"), "latest")
    assert len(plain.layers) == 2
    assert len(popular.layers) == 4
    # the most popular first: busybox (50), libshared (40), then git
    busybox = next(p for p in closure_of("git") if p.endswith("-busybox"))
    assert digests(popular)[:2] == [layer_digest(svc, busybox),
                                    layer_digest(svc, built_path("libshared"))]


def test_restart_serves_stored_image_without_nix(tmp_path):
    first = service(tmp_path).image(Image.from_name("hello"), "latest")
    again = service(tmp_path)
    second = again.image(Image.from_name("hello"), "latest")
    assert again.nix.runs == 0
    assert second.manifest(DOCKER_MANIFEST) == first.manifest(DOCKER_MANIFEST)


def test_restart_reuses_stored_layers_for_a_new_image(tmp_path):
    git = service(tmp_path).image(Image.from_name("shell/git"), "latest")
    again = service(tmp_path)
    htop = again.image(Image.from_name("shell/htop"), "latest")
    shared = {l["digest"] for l in git.layers} & {l["digest"] for l in htop.layers}
    assert shared
    assert not {keys.blob(d) for d in shared} & set(again.storage.puts)


def test_same_request_same_digest_in_fresh_storage(tmp_path):
    a = service(tmp_path / "a").image(Image.from_name("shell/hello"), "latest")
    b = service(tmp_path / "b").image(Image.from_name("shell/hello/hello"), "latest")
    for media_type in (DOCKER_MANIFEST, OCI_MANIFEST):
        assert a.manifest(media_type) == b.manifest(media_type)


def test_every_referenced_blob_is_stored_and_typed(tmp_path):
    svc = service(tmp_path)
    record = svc.image(Image.from_name("shell/hello"), "latest")
    for media_type in (DOCKER_MANIFEST, OCI_MANIFEST):
        doc = manifest_of(record, media_type)
        assert doc["mediaType"] == media_type
        for ref in [doc["config"], *doc["layers"]]:
            assert len(svc.storage.read(keys.blob(ref["digest"]))) == ref["size"]
    config = json.loads(svc.storage.read(keys.blob(manifest_of(record)["config"]["digest"])))
    assert config["rootfs"]["diff_ids"] == [l["diff_id"] for l in record.layers]
    assert config["config"]["Cmd"] == ["bash"]
    assert any(e.startswith("SSL_CERT_FILE=/nix/store/") for e in config["config"]["Env"])


def test_wide_closure_stays_within_the_layer_budget(tmp_path):
    # every one of wide's 130 dependencies popular: 131 groups want layers
    url = tmp_path / "popularity.json"
    url.write_text(json.dumps({f"wide-dep-{i}-1.0": 10 + i for i in range(130)}))
    svc = service(tmp_path / "a", max_layers=100, popularity_url=url.as_uri())
    record = svc.image(Image.from_name("wide"), "latest")
    assert len(record.layers) == 100
    # the most popular deps keep their own layers, the least share the last
    assert [l["paths"] for l in record.layers[:98]] == [1] * 98
    assert sum(l["paths"] for l in record.layers[:-1]) == 131  # 130 deps and wide itself
    small = service(tmp_path / "b", max_layers=5, popularity_url=url.as_uri()).image(
        Image.from_name("wide"), "latest")
    assert len(small.layers) == 5
    assert sum(l["paths"] for l in small.layers[:-1]) == 131


def test_arm64_config_says_arm64(tmp_path, monkeypatch):
    # this machine cannot build aarch64: check the config from the build's last step
    from builders.image import manifest
    config = json.loads(manifest.image_config(arch=Image.from_name("arm64/hello").arch,
                                              diff_ids=["sha256:" + "0" * 64]))
    assert config["architecture"] == "arm64" and config["os"] == "linux"


def test_missing_packages_and_empty_names(tmp_path):
    svc = service(tmp_path)
    with pytest.raises(PackagesNotFound) as info:
        svc.image(Image.from_name("hello/nosuch/gti"), "latest")
    assert [name for name, _ in info.value.missing] == ["gti", "nosuch"]
    assert dict(info.value.missing)["gti"] == ["git"]
    with pytest.raises(InvalidImage):
        svc.image(Image.from_name("arm64"), "latest")


def test_unknown_packages_are_remembered_not_evaluated_again(tmp_path):
    svc = service(tmp_path)
    for _ in range(3):
        with pytest.raises(PackagesNotFound):
            svc.image(Image.from_name("hello/nosuchpkg"), "latest")
    assert svc.nix.runs == 1
    # another worker on the same storage does not evaluate it either
    other = service(tmp_path)
    with pytest.raises(PackagesNotFound) as info:
        other.image(Image.from_name("nosuchpkg/hello"), "latest")
    assert "nosuchpkg" in info.value.message and other.nix.runs == 0
    # refusals and build failures too: the same at the same revision
    for name in ("unfree-tool", "broken"):
        with pytest.raises(PackageUnbuildable if name == "unfree-tool" else BuildFailed):
            svc.image(Image.from_name(name), "latest")
        runs = svc.nix.runs
        for _ in range(2):
            with pytest.raises(BuildError):
                svc.image(Image.from_name(name), "latest")
        assert svc.nix.runs == runs


def test_layers_made_in_parallel_are_the_layers_made_one_by_one(tmp_path):
    one = service(tmp_path / "one", layer_workers=1).image(Image.from_name("shell/git"), "latest")
    four = service(tmp_path / "four", layer_workers=4).image(Image.from_name("shell/git"), "latest")
    assert one.manifest(OCI_MANIFEST) == four.manifest(OCI_MANIFEST)


def test_images_built_at_once_make_a_shared_layer_once(tmp_path):
    import threading
    svc = service(tmp_path)
    names = ["shell/git", "shell/htop", "shell/curl", "shell/hello"]
    records = {}
    threads = [threading.Thread(target=lambda n=n: records.update(
        {n: svc.image(Image.from_name(n), "latest")})) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(records) == sorted(names)
    blob_puts = [k for k in svc.storage.puts if k.startswith("layers/")]
    assert len(blob_puts) == len(set(blob_puts))
    shared = set.intersection(*(set(digests(r)) for r in records.values()))
    assert len(shared) >= 7


def kinds(calls):
    """Storage calls by method and the kind of key (its first component)."""
    return collections.Counter((method, key.split("/")[0]) for method, key in calls)


def test_every_storage_call_of_a_cold_pull_has_a_reason(tmp_path):
    svc = service(tmp_path)
    record = svc.image(Image.from_name("shell/hello"), "latest")
    n = len(record.layers)  # the store-path layers and the symlink layer
    assert kinds(svc.storage.calls) == {
        ("read", "sources"): 1, ("put", "sources"): 1,  # what latest names, shared
        ("read", "manifests"): 1,   # another instance may have built it
        ("read", "failures"): 1,    # ... or found that it cannot be built
        ("read", "claims"): 1, ("put", "claims"): 2,  # one build across instances: claimed, released
        # popularity for layering, then counted (2 + 1); the folder's
        # revision kept as a tag, once per revision (1 + 1)
        ("read", "state"): 3, ("put", "state"): 2,
        ("read", "layerinfo"): n,   # each layer may be stored already
        # the layers, the config, the two manifests; the SBOM, the empty
        # config of artifacts, and an SBOM artifact manifest per manifest
        ("put", "layers"): n + 3 + 4,
        ("put", "blobsources"): n + 3 + 4,  # how to make each blob again if it is lost
        ("put", "referrers"): 2,    # each manifest's referrers: its SBOM artifact
        ("put", "layerinfo"): n,    # what each group of store paths was stored as
        ("put", "manifests"): 1,    # the image's record
    }
    # another worker serves it with two reads, and no Nix
    other = service(tmp_path)
    assert other.image(Image.from_name("shell/hello"), "latest").manifests == record.manifests
    assert kinds(other.storage.calls) == {("read", "sources"): 1, ("read", "manifests"): 1,
                                          # pulled: marked for GC, once a day
                                          ("mark", "manifests"): 1}
    assert other.nix.runs == 0
    # and from then on from memory, with no storage call at all
    before = len(other.storage.calls)
    other.image(Image.from_name("shell/hello"), "latest")
    assert len(other.storage.calls) == before


def test_a_passing_failure_answers_only_the_requests_that_waited_for_it(tmp_path):
    """A failure that says nothing of the image (the source could not be
    fetched) reaches the requests that waited for that build, in any
    process, and only them."""
    failures = Failures(FilesystemStorage(tmp_path))
    key = "k" * 64
    waiting_since = time.time()
    failures.remember(key, SourceUnavailable("cannot fetch the channel"))
    other = Failures(FilesystemStorage(tmp_path))    # another worker
    assert other.recall(key) is None                  # a new pull tries again
    assert other.recall(key, since=waiting_since).message == "cannot fetch the channel"
    assert other.recall(key, since=time.time() + 1) is None  # waited for a later build


def test_verdicts_expire(tmp_path):
    now = [1000.0]
    failures = Failures(FilesystemStorage(tmp_path), verdict_seconds=60, clock=lambda: now[0])
    failures.remember("k", PackagesNotFound([("nosuch", [])]))
    other = Failures(FilesystemStorage(tmp_path), verdict_seconds=60, clock=lambda: now[0])
    assert isinstance(other.recall("k"), PackagesNotFound)
    now[0] += 61
    assert Failures(FilesystemStorage(tmp_path), verdict_seconds=60,
                    clock=lambda: now[0]).recall("k") is None


def test_verdicts_hold_for_the_settings_that_decided_them(tmp_path):
    from builders.jobs.failures import Settings
    from builders.image.platforms import ARM64
    now = [0.0]
    conf = tmp_path / "nix.conf"
    conf.write_text("sandbox = false\n")
    base = dict(nix_timeout=60, platforms=(AMD64,), nix_config="substituters =",
                nix_conf=str(conf))

    def failures(**changed):
        return Failures(FilesystemStorage(tmp_path / "s"),
                        settings=Settings(**{**base, **changed}, clock=lambda: now[0]))
    failures().remember("k", BuildFailed("package broken failed to build"))
    assert isinstance(failures().recall("k"), BuildFailed)
    # another timeout, other platforms or other Nix settings may well build it
    for changed in ({"nix_timeout": 600}, {"platforms": (AMD64, ARM64)},
                    {"nix_config": "substituters = https://cache.example"}):
        assert failures(**changed).recall("k") is None, changed
    same = failures()
    conf.write_text("sandbox = false\nmax-jobs = 8\n")  # nix.conf edited
    now[0] += 1
    assert same.recall("k") is None
    assert failures().recall("k") is None


def test_a_pull_after_a_settings_change_runs_nix_again(tmp_path):
    from builders.jobs.failures import Settings
    svc = service(tmp_path)
    with pytest.raises(BuildFailed):
        svc.image(Image.from_name("broken"), "latest")
    runs = svc.nix.runs
    with pytest.raises(BuildFailed):
        svc.image(Image.from_name("broken"), "latest")
    assert svc.nix.runs == runs
    # the operator raised NIX_TIMEOUT: the old verdict is moot
    other = service(tmp_path)
    other.failures = Failures(other.storage, settings=Settings(nix_timeout=600))
    with pytest.raises(BuildFailed):
        other.image(Image.from_name("broken"), "latest")
    assert other.nix.runs > 0


def test_a_pull_waits_a_bounded_time_and_the_build_goes_on(tmp_path):
    svc = service(tmp_path / "store", pkgs=drowsy_set(tmp_path / "pkgs", 4), pull_wait=1)
    image = Image.from_name("drowsy")
    with pytest.raises(BuildInProgress) as info:
        svc.image(image, "latest")
    assert info.value.retry_after > 0
    assert info.value.progress.startswith(("evaluating", "realising"))
    assert "still building" in info.value.message
    # the job went on without a waiter; a later pull gets the image, from
    # the same single build
    record = svc.image(image, "latest", wait=60)
    assert record.packages == ["drowsy"]
    assert svc.storage.puts.count(keys.manifest(record.key)) == 1


def test_outcomes_remembered_by_kind(tmp_path):
    now = [1000.0]
    failures = Failures(FilesystemStorage(tmp_path), verdict_seconds=3600, timeout_seconds=60,
                        clock=lambda: now[0])
    failures.remember("broken", BuildFailed("package broken failed to build"))
    failures.remember("slow", BuildTimeout(10))
    failures.remember("offline", SourceUnavailable("cannot fetch the channel"))
    now[0] += 30
    assert isinstance(failures.recall("broken"), BuildFailed)
    assert isinstance(failures.recall("slow"), BuildTimeout)
    assert failures.recall("offline") is None  # may work on the next try
    now[0] += 31
    assert failures.known("slow") is None and failures.recall("slow") is None
    # memory answers for seconds only; storage, where an operator may have
    # cleared it, is read again, and the verdict holds
    assert failures.known("broken") is None
    assert isinstance(failures.recall("broken"), BuildFailed)
    assert isinstance(failures.known("broken"), BuildFailed)


def test_a_build_the_machine_stopped_is_remembered_for_seconds_not_as_a_verdict(tmp_path):
    from prometheus_client import REGISTRY
    pkgs, marker = killed_once_set(tmp_path / "pkgs")
    svc = service(tmp_path / "store", pkgs=pkgs)
    now = [time.time()]
    svc.failures = Failures(svc.storage, clock=lambda: now[0])
    image = Image.from_name("killed-once")

    def failed(kind, cause):
        return REGISTRY.get_sample_value("registry_build_failures_total",
                                         {"kind": kind, "cause": cause}) or 0
    before = failed("machine", "signal")
    try:
        with pytest.raises(BuildInterrupted) as info:
            svc.image(image, "latest")
        assert "killed by signal 9 (Killed)" in info.value.message
        assert failed("machine", "signal") == before + 1
        # a pull right after (docker's HEAD then GET) costs no second build
        runs = svc.nix.runs
        with pytest.raises(BuildInterrupted):
            svc.image(image, "latest")
        assert svc.nix.runs == runs
        # seconds later it is forgotten, and the pull builds the image
        now[0] += BuildInterrupted.retry_after + 1
        record = svc.image(image, "latest")
        assert record.packages == ["killed-once"] and svc.nix.runs > runs
    finally:
        os.unlink(marker)


def test_layers_that_fill_the_disk_are_the_machines_trouble(tmp_path, monkeypatch):
    import tempfile
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tiny)], check=True)
    try:
        # where bucket storage makes layers (the filesystem makes them in
        # its own folder, whose being full is the storage's trouble: 503)
        monkeypatch.setattr(tempfile, "tempdir", str(tiny))
        svc = service(tmp_path / "store", storage=SpoolingLikeBuckets)
        with pytest.raises(BuildInterrupted) as info:
            svc.image(Image.from_name("hello"), "latest")
        assert info.value.cause == "disk"
        assert info.value.message.startswith(
            "the build machine has no disk space left (No space left on device)")
        assert svc.failures.lifetime(info.value) == BuildInterrupted.retry_after
    finally:
        subprocess.run(["umount", str(tiny)], check=True)


def test_each_stored_layer_is_reported_with_its_size(tmp_path):
    svc = service(tmp_path)
    git = svc.image(Image.from_name("git"), "latest")
    sizes = []
    groups = [tuple(closure_of("git"))]
    stored = svc.layerstore.store_layers(groups, {"tmp": ("dir", 0o1777)}, on_layer=sizes.append)
    assert sorted(sizes) == sorted(layer["size"] for layer in stored) and len(sizes) == 2
    assert git.layers  # built first, so the store paths are there
