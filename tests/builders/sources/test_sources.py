import os

import pytest

from builders.errors import RevisionNotFound, SourceUnavailable
from builders.sources.channel import ChannelSource
from builders.sources.folder import tree_hash


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
    from builders.sources.git import GitSource
    url = f"file://{tmp_path}/no-such-repo"
    with pytest.raises(SourceUnavailable) as info:
        GitSource(url).resolve("latest")
    assert url in info.value.message


def test_git_tags_are_its_branches_and_tags(tmp_path):
    import subprocess
    from builders.sources.git import GitSource

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


def test_a_git_commit_tag_must_be_on_a_branch_or_tag(tmp_path):
    """GitHub advertises pull requests (forks' too) as refs/pull/*: a commit
    only they hold is not built; one deep in a branch's history is."""
    import subprocess
    from builders.errors import RevisionNotFound
    from builders.sources.git import GitSource
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                               *args], check=True, capture_output=True, text=True).stdout.strip()
    git("init", "-q", "-b", "main")
    (repo / "default.nix").write_text("{ ... }: {}")
    git("add", "default.nix")
    git("commit", "-qm", "one")
    old = git("rev-parse", "HEAD")
    git("commit", "-q", "--allow-empty", "-m", "two")
    git("checkout", "-q", "-b", "fork")
    git("commit", "-q", "--allow-empty", "-m", "from a fork")
    forked = git("rev-parse", "HEAD")
    git("update-ref", "refs/pull/1/head", forked)
    git("checkout", "-q", "main")
    git("branch", "-D", "fork")
    git("tag", "-a", "v0", "-m", "an old release", old)
    git("reset", "-q", "--hard", old)  # main: one; tag v0: one; nothing else holds two
    git("commit", "-q", "--allow-empty", "-m", "three")
    deep = old
    mirrors = tmp_path / "mirrors"
    source = GitSource(f"file://{repo}", mirror_root=str(mirrors))
    # a commit tag names its revision without asking the remote; the check
    # comes before a build (an image stored already needs none)
    with pytest.raises(RevisionNotFound) as e:
        source.admit(source.resolve(forked))
    assert e.value.message.startswith(f"commit {forked} is on no branch or tag of file://{repo}")
    assert "pull requests or forks" in e.value.message
    # below a branch's tip: found in the mirror of branches and tags
    git("tag", "-d", "v0")
    source.admit(source.resolve(deep))
    assert source.resolve(deep).nix["rev"] == deep
    assert list(mirrors.glob("*.git"))
    # a commit the branches gain later is found by fetching again
    git("merge", "-q", "--no-edit", forked)
    source.admit(source.resolve(forked))


@pytest.fixture
def channels(tmp_path):
    """A local stand-in for channels.nixos.org and GitHub's compare API:
    publish(channel, commit) and ancestor(commit, head)."""
    import functools
    import http.server
    import threading
    root = tmp_path / "www"
    (root / "compare").mkdir(parents=True)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_port}"

    def publish(channel, commit):
        (root / channel).mkdir(exist_ok=True)
        (root / channel / "git-revision").write_text(commit + "\n")

    def ancestor(commit, head):
        (root / "compare" / f"{commit}...{head}").write_text('{"status": "ahead"}')

    def source(**kw):
        return ChannelSource("nixos-unstable", base, "http://archive/{rev}.tar.gz",
                             check_url=base + "/compare/{base}...{head}", **kw)
    yield publish, ancestor, source
    httpd.shutdown()


def test_a_channel_name_as_tag_picks_that_channel(channels):
    publish, _, source = channels
    publish("nixos-unstable", "a" * 40)
    publish("nixos-24.05", "b" * 40)
    src = source()
    assert src.resolve("latest").nix["url"] == f"http://archive/{'a' * 40}.tar.gz"
    picked = src.resolve("nixos-24.05")
    assert picked.nix["url"] == f"http://archive/{'b' * 40}.tar.gz"
    assert picked.description == f"nixos-24.05 at {'b' * 12}"
    with pytest.raises(RevisionNotFound):
        src.resolve("nixos-99.99")          # no such channel
    assert src.selector("some-tag") is None  # the registry decides: latest, or 404 when strict
    # the operator may allow only some channels
    only = source(allowed=["nixos-unstable"])
    assert only.selector("nixos-24.05") is None and only.tags() == ["latest", "nixos-unstable"]


def test_a_commit_tag_is_built_only_from_an_allowed_channels_history(channels):
    publish, ancestor, source = channels
    head, old, fork = "a" * 40, "c" * 40, "f" * 40
    publish("nixos-unstable", head)
    ancestor(old, head)
    src = source()
    assert src.resolve(old).nix["url"] == f"http://archive/{old}.tar.gz"
    src.admit(src.resolve(old))
    with pytest.raises(RevisionNotFound) as info:
        src.admit(src.resolve(fork))        # e.g. a fork's commit, served under nixpkgs' URL
    assert "not in the history of nixos-unstable" in info.value.message
    # unless the operator allows any commit
    source(any_commit=True).admit(src.resolve(fork))


def test_git_errors_are_sentences_naming_the_remote_and_what_git_said(tmp_path):
    from builders.errors import SourceUnavailable
    from builders.sources.git import GitSource
    gone = tmp_path / "gone"
    with pytest.raises(SourceUnavailable) as e:
        GitSource(f"file://{gone}").resolve("latest")
    assert e.value.message == (
        f"cannot read the git repository file://{gone}: git says '{gone}' does not appear to "
        "be a git repository; Could not read from remote repository.")
    assert "Please make sure you have the correct access rights" in e.value.log_tail
