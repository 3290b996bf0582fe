"""What a tag names now: asked of the source once per interval, shared through storage."""
from builders.sources.revisions import Revisions
from builders.sources.folder import PathSource
from storage import FilesystemStorage


class CountingPathSource(PathSource):
    calls = 0

    def _resolve(self, tag):
        self.calls += 1
        return super()._resolve(tag)


def test_moving_source_is_resolved_once_per_interval_and_shared(tmp_path):
    (tmp_path / "pkgs").mkdir()
    (tmp_path / "pkgs" / "default.nix").write_text("{ ... }: {}")
    now = [1000.0]
    store = FilesystemStorage(str(tmp_path / "store"))
    source = CountingPathSource(str(tmp_path / "pkgs"))
    one = Revisions(source, store, refresh=60, clock=lambda: now[0])
    two = Revisions(source, store, refresh=60, clock=lambda: now[0])
    first = one.resolve("latest")
    assert one.resolve("other-tag") == first  # tags are ignored for a folder
    assert two.resolve("latest") == first     # the other worker reads the shared answer
    assert source.calls == 1
    (tmp_path / "pkgs" / "default.nix").write_text("{ ... }: { changed = true; }")
    now[0] += 30
    assert one.resolve("latest") == first
    now[0] += 31
    changed = two.resolve("latest")
    assert changed != first and source.calls == 2
    # the first worker's answer expired too: it takes the shared new one
    assert one.resolve("latest") == changed and source.calls == 2


def test_known_revision_never_asks_the_source(tmp_path):
    (tmp_path / "pkgs").mkdir()
    (tmp_path / "pkgs" / "default.nix").write_text("{ ... }: {}")
    store = FilesystemStorage(str(tmp_path / "store"))
    source = CountingPathSource(str(tmp_path / "pkgs"))
    assert Revisions(source, store, refresh=60).known() is None
    resolved = Revisions(source, store, refresh=60).resolve("latest")
    # another process, long after: it reports what was last resolved, as it is
    later = Revisions(source, store, refresh=60, clock=lambda: 1e12)
    assert later.known() == resolved and source.calls == 1


def test_a_folder_revision_images_were_built_from_stays_a_tag(tmp_path):
    """The content hash of a folder revision names it once an image was
    built from it; after the folder changed, its images are still served by
    that tag and nothing new is built from contents that are gone."""
    import pytest

    from builders.errors import RevisionNotFound
    from builders.image.names import Image
    from tests.builders.test_service import service
    from tests.conftest import PKGS
    import shutil
    pkgs = tmp_path / "pkgs"
    shutil.copytree(PKGS, pkgs)
    svc = service(tmp_path / "store", pkgs=pkgs)
    svc.revisions.refresh = 0  # look at the folder on every pull
    before = svc.revisions.resolve("latest")
    tag = svc.source.revision_tag(before)
    assert svc.revisions.tags() == ["latest"]  # nothing built yet
    hello = svc.image(Image.from_name("hello"), "latest")
    assert svc.revisions.tags() == sorted(["latest", tag])
    # the tag names the revision as it is now: a new image builds at it
    assert svc.image(Image.from_name("git"), tag).key == svc.image(Image.from_name("git"),
                                                                   "latest").key

    with open(pkgs / "default.nix", "a") as f:
        f.write("\n# changed\n")
    after = svc.revisions.resolve("latest")
    assert after != before
    again = service(tmp_path / "store", pkgs=pkgs)  # another process sees the same tags
    assert again.image(Image.from_name("hello"), tag).manifests == hello.manifests
    assert again.builder.nix.runs == 0
    with pytest.raises(RevisionNotFound, match=r"curl was not built from .*earlier contents "
                                               rf"{tag}.*pull latest"):
        again.image(Image.from_name("curl"), tag)
    # tags/list offers an image the revisions it pulls at: curl is not at the earlier one
    assert again.tags(Image.from_name("hello")) == sorted(["latest", tag])
    assert again.tags(Image.from_name("curl")) == ["latest"]
    # a hash that names no revision built here is just another tag (latest)
    assert again.revisions.resolve("0123456789ab") == again.revisions.resolve("latest")
