import os

import pytest

from builders.errors import SourceUnavailable
from builders.service import ImageService
from builders.sources import ChannelSource, PathSource, tree_hash
from storage import FilesystemStorage


def test_tree_hash_follows_contents_not_git_metadata(tmp_path):
    (tmp_path / "default.nix").write_text("{ ... }: {}")
    (tmp_path / ".git").mkdir()
    first = tree_hash(tmp_path)
    (tmp_path / ".git" / "index").write_text("changes all the time")
    assert tree_hash(tmp_path) == first
    (tmp_path / "default.nix").write_text("{ ... }: { x = 1; }")
    assert tree_hash(tmp_path) != first
    os.chmod(tmp_path / "default.nix", 0o755)
    assert tree_hash(tmp_path) != first


def test_unreachable_channel_names_the_url():
    source = ChannelSource("nixos-unstable", "http://127.0.0.1:9", "http://x/{rev}.tar.gz")
    with pytest.raises(SourceUnavailable) as info:
        source.resolve("latest")
    assert "http://127.0.0.1:9/nixos-unstable/git-revision" in info.value.message


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
    one = ImageService(store, source, source_refresh=60, clock=lambda: now[0])
    two = ImageService(store, source, source_refresh=60, clock=lambda: now[0])
    first = one.revision("latest")
    assert one.revision("other-tag") == first  # tags are ignored for a folder
    assert two.revision("latest") == first     # the other worker reads the shared answer
    assert source.calls == 1
    (tmp_path / "pkgs" / "default.nix").write_text("{ ... }: { changed = true; }")
    now[0] += 30
    assert one.revision("latest") == first
    now[0] += 31
    changed = two.revision("latest")
    assert changed != first and source.calls == 2
    # the first worker's answer expired too: it takes the shared new one
    assert one.revision("latest") == changed and source.calls == 2


def test_unreachable_git_repository_names_it(tmp_path):
    from builders.sources import GitSource
    url = f"file://{tmp_path}/no-such-repo"
    with pytest.raises(SourceUnavailable) as info:
        GitSource(url).resolve("latest")
    assert url in info.value.message
