"""Garbage collection on storage that images were really built into: what
is live stays, what is not goes, and what is used meanwhile survives."""
import functools
import json
import os
import time

import pytest

from builders.digests import digest_of
from builders.image import records
from builders.image.manifest import OCI_MANIFEST
from builders.image.names import Image
from builders.sources import revisions
from storage import gc, keys, lifecycle
from tests.builders.test_service import kinds, service

DAY = 24 * 3600
GRACE = lifecycle.grace_seconds(120)


def collect(svc, *, days_later=0.0, retention_days=30, **kw):
    """A collection as if run `days_later` days from now."""
    return gc.Collector(svc.storage, retention=retention_days * DAY, grace=GRACE,
                        failure_ttl=3600, clock=lambda: time.time() + days_later * DAY,
                        held=records.held,
                        prune_tags=functools.partial(revisions.prune_kept, svc.storage), **kw)


def blobs_of(svc, record):
    return records.references(record)


def present(svc, digests):
    return {d for d in digests if svc.storage.exists(keys.blob(d))}


def garbage(svc, data=b"a layer no image uses"):
    digest = digest_of(data)
    svc.storage.put_bytes(keys.blob(digest), data)
    return digest


def age(svc, key, days):
    """Make an object look last written or used `days` ago (filesystem)."""
    path = svc.storage._path(key)
    then = time.time() - days * DAY
    os.utime(path, (then, then))


def age_image(svc, record, days):
    """As if nothing pulled the image for `days`: its record, and the
    manifests a pull by digest would have marked."""
    age(svc, keys.manifest(record.key), days)
    for media_type in record.manifests:
        age(svc, keys.blob(digest_of(record.manifest(media_type))), days)


def test_what_images_pulled_within_the_retention_need_stays(tmp_path):
    svc = service(tmp_path)
    git = svc.image(Image.from_name("shell/git"), "latest")
    htop = svc.image(Image.from_name("shell/htop"), "latest")
    junk = garbage(svc)
    report = collect(svc, days_later=3).run()
    for record in (git, htop):
        assert svc.storage.exists(keys.manifest(record.key))
        refs = blobs_of(svc, record)
        assert present(svc, refs) == refs  # SBOM and its artifacts included
        for subject in record.sbom["referrers"]:
            assert svc.storage.exists(keys.referrers(subject))
    assert not svc.storage.exists(keys.blob(junk))
    assert [i.key for i in report.doomed if i.key.startswith("layers/")] == [keys.blob(junk)]
    assert report.deleted["layers"].objects == 1


def test_images_not_pulled_within_the_retention_go_with_what_only_they_use(tmp_path):
    svc = service(tmp_path)
    git = svc.image(Image.from_name("shell/git"), "latest")
    htop = svc.image(Image.from_name("shell/htop"), "latest")
    age_image(svc, git, 40)  # htop was pulled since; git was not
    report = collect(svc, days_later=3).run()
    assert not svc.storage.exists(keys.manifest(git.key))
    assert svc.storage.exists(keys.manifest(htop.key))
    needed = blobs_of(svc, htop)
    assert present(svc, needed) == needed  # the layers both shared stay
    only_git = blobs_of(svc, git) - needed
    assert only_git and not present(svc, only_git)
    for subject in git.sbom["referrers"]:
        assert not svc.storage.exists(keys.referrers(subject))
    gone = {lifecycle.kind_of(i.key) for i in report.doomed}
    assert {"manifests", "layers", "blobsources", "layerinfo", "referrers"} <= gone
    # pulled again, it is built again, whole
    again = service(tmp_path).image(Image.from_name("shell/git"), "latest")
    refs = blobs_of(svc, again)
    assert present(svc, refs) == refs


def test_a_pull_by_digest_keeps_its_image(tmp_path):
    svc = service(tmp_path)
    git = svc.image(Image.from_name("git"), "latest")
    age_image(svc, git, 40)
    other = service(tmp_path)  # a process that pulls it by digest, as Kubernetes does
    other.mark_pulled(keys.blob(digest_of(git.manifest(OCI_MANIFEST))))
    collect(svc).run()
    assert svc.storage.exists(keys.manifest(git.key))


def test_pulls_mark_a_record_once_per_interval(tmp_path):
    service(tmp_path).image(Image.from_name("hello"), "latest")
    other = service(tmp_path)
    for _ in range(3):
        other.image(Image.from_name("hello"), "latest")
    assert kinds(other.storage.calls)[("mark", "manifests")] == 1


def test_what_is_younger_than_the_grace_period_stays(tmp_path):
    svc = service(tmp_path)
    junk = garbage(svc)  # as a layer of a build whose record is not written yet
    report = collect(svc, days_later=GRACE / DAY - 0.01).run()
    assert svc.storage.exists(keys.blob(junk)) and not report.doomed
    assert GRACE > 24 * 3600 + 120  # longer than a day of caches and a build


def test_a_layer_reused_while_it_is_judged_survives(tmp_path):
    # every path popular: each has a layer of its own, which any image
    # holding that path shares
    popular = tmp_path / "popularity.json"
    popular.write_text(json.dumps({n: 100 for n in ("git-1.0", "hello-1.0", "libshared-1.0",
                                                    "busybox")}))
    svc = service(tmp_path / "s", popularity_url=popular.as_uri())
    git = svc.image(Image.from_name("git"), "latest")
    os.remove(svc.storage._path(keys.manifest(git.key)))  # its record expired: all garbage
    # another process builds an image that shares its layers
    builder = service(tmp_path / "s", popularity_url=popular.as_uri())
    made = {}

    def judged(doomed):
        assert {keys.blob(l["digest"]) for l in git.layers} <= {i.key for i in doomed}
        made["record"] = builder.image(Image.from_name("git/hello"), "latest")
    report = collect(svc, days_later=3, on_judged=judged).run()
    record = made["record"]
    shared = {l["digest"] for l in git.layers} & {l["digest"] for l in record.layers}
    assert len(shared) == 3  # git, libshared and busybox
    assert kinds(builder.storage.calls)[("mark", "layers")] == 3  # reused, so marked
    refs = blobs_of(builder, record)
    assert present(builder, refs) == refs  # and so kept
    assert report.survived >= 3
    # the new image pulls whole, in yet another process
    again = service(tmp_path / "s", popularity_url=popular.as_uri())
    assert again.image(Image.from_name("git/hello"), "latest").manifests == record.manifests


def test_a_dry_run_deletes_nothing_and_says_what_would_go(tmp_path):
    svc = service(tmp_path)
    junk = garbage(svc, b"x" * 1000)
    report = collect(svc, days_later=3).run(dry_run=True)
    assert [(i.key, i.size) for i in report.doomed] == [(keys.blob(junk), 1000)]
    assert svc.storage.exists(keys.blob(junk))
    state = json.loads(svc.storage.read(keys.gc_state()))
    assert "runs" not in state and state["stored"]["layers"]["objects"] >= 1


def test_expired_records_go(tmp_path):
    svc = service(tmp_path)
    for key in (keys.failure("f"), keys.claim("c"), keys.revision("r")):
        svc.storage.put_bytes(key, b"{}", "application/json")
    report = collect(svc, days_later=8).run()
    assert {i.key for i in report.doomed} >= {keys.failure("f"), keys.claim("c"),
                                              keys.revision("r")}
    fresh = service(tmp_path / "fresh")
    fresh.storage.put_bytes(keys.failure("f"), b"{}", "application/json")
    assert not collect(fresh, days_later=0.01).run().doomed


def test_the_run_is_written_down_for_metrics(tmp_path):
    from app.metrics import StoredCollector
    svc = service(tmp_path)
    svc.image(Image.from_name("hello"), "latest")
    garbage(svc, b"y" * 5000)
    report = collect(svc, days_later=3).run()
    state = json.loads(svc.storage.read(keys.gc_state()))
    # the garbage, and the claim the build released (expired a day later)
    assert report.deleted["layers"].bytes == 5000 and report.deleted["claims"].objects == 1
    assert state["runs"] == 1 and state["freed_bytes"] == report.freed.bytes
    metrics = {(s.name, tuple(s.labels.values())): s.value
               for m in StoredCollector(svc.storage).collect() for s in m.samples}
    assert metrics[("registry_gc_freed_bytes_total", ())] == report.freed.bytes
    assert metrics[("registry_stored_objects", ("manifests",))] == 1
    assert metrics[("registry_stored_bytes", ("layers",))] == state["stored"]["layers"]["bytes"]


def test_an_index_keeps_its_platforms_images(tmp_path):
    from builders.image.platforms import AMD64, ARM64
    svc = service(tmp_path, platforms=(AMD64, ARM64))
    index = svc.image(Image.from_name("hello"), "latest")
    for key in index.members.values():  # pulled only through the index
        age_image(svc, svc.stored(key), 40)
    collect(svc, days_later=3).run()
    for key in index.members.values():
        assert svc.storage.exists(keys.manifest(key))
    for media_type in index.manifests:
        assert svc.storage.exists(keys.blob(digest_of(index.manifest(media_type))))


@pytest.mark.parametrize("body", [b"not json", b'{"key": "k", "future_field": 1}'])
def test_a_record_it_cannot_read_is_kept_with_what_it_names(tmp_path, body):
    svc = service(tmp_path)
    kept = garbage(svc)
    svc.storage.put_bytes(keys.manifest("odd"), body + kept.encode(), "application/json")
    age(svc, keys.manifest("odd"), 40)
    collect(svc, days_later=3).run()
    assert svc.storage.exists(keys.manifest("odd"))
    assert svc.storage.exists(keys.blob(kept))


def test_a_folder_revision_stays_a_tag_while_an_image_built_from_it_is_kept(tmp_path):
    import shutil
    from tests.conftest import PKGS
    pkgs = tmp_path / "pkgs"
    shutil.copytree(PKGS, pkgs)
    svc = service(tmp_path / "s", pkgs=pkgs)
    svc.revisions.refresh = 0
    hello = svc.image(Image.from_name("hello"), "latest")
    old_tag = svc.source.revision_tag(svc.revisions.resolve("latest"))
    with open(pkgs / "default.nix", "a") as f:
        f.write("\n# changed\n")
    git = svc.image(Image.from_name("git"), "latest")
    new_tag = svc.source.revision_tag(svc.revisions.resolve("latest"))
    assert {old_tag, new_tag} <= set(svc.revisions.tags())
    # the revision's one image is collected: the tag goes with it
    age_image(svc, hello, 40)
    report = collect(svc, days_later=3).run()
    assert report.pruned_tags == [old_tag]
    kept = json.loads(svc.storage.read(keys.kept_revisions()))["revisions"]
    assert set(kept) == {new_tag}
    assert svc.storage.exists(keys.manifest(git.key))
    assert set(service(tmp_path / "s", pkgs=pkgs).revisions.tags()) == {"latest", new_tag}
