"""What a tag names now: asked of the source once per interval, shared through storage."""
from builders.revisions import Revisions
from builders.sources import PathSource
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
