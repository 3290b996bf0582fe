import os

import pytest

from builders.errors import SourceUnavailable
from builders.sources import ChannelSource, PathSource, tree_hash


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


def test_unreachable_git_repository_names_it(tmp_path):
    from builders.sources import GitSource
    url = f"file://{tmp_path}/no-such-repo"
    with pytest.raises(SourceUnavailable) as info:
        GitSource(url).resolve("latest")
    assert url in info.value.message


def test_git_tags_are_its_branches_and_tags(tmp_path):
    import subprocess
    from builders.sources import GitSource

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t",
                        *args], check=True, capture_output=True)
    git("init", "-q", "-b", "main")
    (tmp_path / "default.nix").write_text("{ ... }: {}")
    git("add", "default.nix")
    git("commit", "-qm", "one")
    git("tag", "-a", "v1", "-m", "annotated")
    git("tag", "light")
    git("branch", "feature/x")
    assert GitSource(f"file://{tmp_path}").tags() == ["feature/x", "latest", "light", "main", "v1"]
