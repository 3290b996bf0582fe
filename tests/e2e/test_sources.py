"""Each package source end to end: git revisions by tag, a channel pinned to
its commit, a local folder that changes, all pulled with skopeo."""
from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import tarfile
import threading
import time

import pytest
import requests

from tests.conftest import PKGS, package_set
from tests.e2e.conftest import run
from tests.e2e.test_api import error_of
from tests.e2e.test_clients import in_root, skopeo_copy, unpack
from tests.server import Server

HELLO = 'echo "Hello, world!"'


def write_pkgs(dest, greeting):
    """The test package set, with hello saying `greeting`."""
    package_set(dest, [(HELLO, f'echo "{greeting}"')])


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                           *args], check=True, capture_output=True, text=True).stdout.strip()


def hello_says(server, tmp_path, tag):
    dest = tmp_path / f"oci-{tag[:12]}"
    skopeo_copy(server, "hello", dest, tag=tag)
    return in_root(unpack(dest, tmp_path / f"bundle-{tag[:12]}", tag=tag), "hello").strip()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """main: one -> two; tag v1 on one; branch feature from one."""
    path = tmp_path_factory.mktemp("pkgs-repo")
    git(path, "init", "-q", "-b", "main")
    write_pkgs(path, "one")
    git(path, "add", "default.nix")
    git(path, "commit", "-qm", "one")
    one = git(path, "rev-parse", "HEAD")
    git(path, "tag", "-a", "v1", "-m", "release one")
    git(path, "checkout", "-q", "-b", "feature")
    write_pkgs(path, "feature")
    git(path, "commit", "-qam", "feature")
    feature = git(path, "rev-parse", "HEAD")
    # a pull request from a fork, as GitHub advertises it: refs/pull/<n>/head
    git(path, "checkout", "-q", "-b", "fork")
    write_pkgs(path, "anyone's")
    git(path, "commit", "-qam", "fork")
    forked = git(path, "rev-parse", "HEAD")
    git(path, "update-ref", "refs/pull/7/head", forked)
    git(path, "checkout", "-q", "main")
    git(path, "branch", "-D", "fork")
    write_pkgs(path, "two")
    git(path, "commit", "-qam", "two")
    return {"path": path, "one": one, "feature": feature, "forked": forked}


@pytest.fixture(scope="module")
def git_server(repo, tmp_path_factory):
    srv = Server(str(tmp_path_factory.mktemp("git-registry")),
                 NIXERY_PKGS_REPO=f"file://{repo['path']}", NIX_TIMEOUT="120")
    srv.start()
    yield srv
    srv.stop()


def test_git_tags_pick_revisions(git_server, repo, tmp_path):
    assert hello_says(git_server, tmp_path, "latest") == "two"
    assert hello_says(git_server, tmp_path, "main") == "two"
    assert hello_says(git_server, tmp_path, "v1") == "one"
    assert hello_says(git_server, tmp_path, "feature") == "feature"
    assert hello_says(git_server, tmp_path, repo["one"]) == "one"
    assert hello_says(git_server, tmp_path, repo["feature"]) == "feature"


def test_git_commit_tag_is_cached_and_reproducible(git_server, repo):
    url = f"{git_server.url}/v2/hello/manifests/{repo['one']}"
    first = requests.get(url)
    assert first.status_code == 200
    builds = git_server.builds()
    again = requests.get(url)
    assert again.content == first.content and git_server.builds() == builds
    # the tag v1 is the same commit: the same image
    assert requests.get(f"{git_server.url}/v2/hello/manifests/v1").content == first.content


@pytest.mark.parametrize("tag", ["no-such-branch", "f" * 40])
def test_git_unknown_ref_is_a_clean_404(git_server, tag):
    r = requests.get(f"{git_server.url}/v2/hello/manifests/{tag}")
    assert r.status_code == 404
    err = error_of(r)
    assert err["code"] == "MANIFEST_UNKNOWN"
    assert tag in err["message"]


def test_a_commit_only_a_pull_request_holds_is_refused(git_server, repo):
    r = requests.get(f"{git_server.url}/v2/hello/manifests/{repo['forked']}")
    assert r.status_code == 404
    err = error_of(r)
    assert err["code"] == "MANIFEST_UNKNOWN"
    assert f"commit {repo['forked']} is on no branch or tag" in err["message"]
    assert "built hello" not in git_server.read_log()[-2000:]


def test_a_second_instance_serves_a_stored_commit_with_its_git_remote_gone(tmp_path):
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    write_pkgs(path, "pinned")
    git(path, "add", "default.nix")
    git(path, "commit", "-qm", "pinned")
    commit = git(path, "rev-parse", "HEAD")
    storage = str(tmp_path / "storage")

    def instance(name):
        return Server(str(tmp_path / name), NIXERY_PKGS_REPO=f"file://{path}", NIX_TIMEOUT="120",
                      STORAGE_PATH=storage, NIXERY_STATE_PATH=str(tmp_path / name / "state"))
    one = instance("one").start()
    try:
        built = requests.get(f"{one.url}/v2/hello/manifests/{commit}", timeout=120)
        assert built.status_code == 200
    finally:
        one.stop()
    shutil.rmtree(path)  # the remote is gone
    two = instance("two").start()
    try:
        served = requests.get(f"{two.url}/v2/hello/manifests/{commit}", timeout=60)
        assert served.status_code == 200, served.text
        assert served.headers["Docker-Content-Digest"] == built.headers["Docker-Content-Digest"]
        assert hello_says(two, tmp_path, commit) == "pinned"
        # an image never built at that commit needs the remote, and says so
        r = requests.get(f"{two.url}/v2/hello/git/manifests/{commit}", timeout=60)
        assert r.status_code == 502
        assert error_of(r)["message"] == (
            f"cannot read the git repository file://{path}: git says '{path}' does not appear "
            "to be a git repository; Could not read from remote repository.")
    finally:
        two.stop()


@pytest.mark.parametrize("tag", ["a;b", "$(id)", "${builtins.abort}", "x'y", ".hidden", "-branch", "a b"])
def test_git_tag_with_syntax_is_rejected_before_anything_runs(git_server, tag):
    before = git_server.read_log()
    r = requests.get(f"{git_server.url}/v2/hello/manifests/{requests.utils.quote(tag, safe='')}")
    assert r.status_code == 400
    assert error_of(r)["code"] == "TAG_INVALID"
    assert "resolved to" not in git_server.read_log()[len(before):]


def test_path_source_change_is_picked_up_after_the_interval(tmp_path):
    pkgs = tmp_path / "pkgs"
    write_pkgs(pkgs, "before the edit")
    srv = Server(str(tmp_path / "srv"), NIXERY_PKGS_PATH=str(pkgs),
                 NIXERY_SOURCE_REFRESH="4").start()
    try:
        url = f"{srv.url}/v2/hello/manifests/latest"
        first = requests.get(url)
        assert first.status_code == 200
        write_pkgs(pkgs, "after the edit")
        cached = requests.get(url)
        assert cached.content == first.content  # within the interval: no new evaluation
        assert srv.builds() == 1 and srv.read_log().count("resolved to") == 1
        time.sleep(4.5)
        fresh = requests.get(url)
        assert fresh.status_code == 200 and fresh.content != first.content
        assert hello_says(srv, tmp_path, "latest") == "after the edit"
        # other tags are ignored for a path source: the same image
        assert requests.get(f"{srv.url}/v2/hello/manifests/anything").content == fresh.content
    finally:
        srv.stop()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def channel_host(tmp_path):
    """A local stand-in for channels.nixos.org and the nixpkgs archive."""
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()

    def publish(greeting, channel="nixos-test"):
        commit = os.urandom(20).hex()
        src = tmp_path / f"nixpkgs-{commit}"
        write_pkgs(src, greeting)
        (root / "archive").mkdir(exist_ok=True)
        with tarfile.open(root / "archive" / f"{commit}.tar.gz", "w:gz") as tar:
            tar.add(src, arcname=f"nixpkgs-{commit}")
        (root / channel).mkdir(exist_ok=True)
        (root / channel / "git-revision").write_text(commit + "\n")
        shutil.rmtree(src)
        return commit

    yield f"http://127.0.0.1:{httpd.server_port}", publish
    httpd.shutdown()


def test_channel_is_pinned_to_its_commit(channel_host, tmp_path):
    base, publish = channel_host
    first_commit = publish("from the channel")
    srv = Server(str(tmp_path / "srv"), NIXERY_CHANNEL="nixos-test", NIXERY_CHANNEL_URL=base,
                 NIXERY_ARCHIVE_URL=base + "/archive/{rev}.tar.gz",
                 NIXERY_SOURCE_REFRESH="3").start()
    released = 1717171717  # 2024-05-31T16:08:37Z: when the channel published the commit
    os.utime(tmp_path / "www" / "nixos-test" / "git-revision", (released, released))
    try:
        assert hello_says(srv, tmp_path, "latest") == "from the channel"
        assert f"nixos-test at {first_commit[:12]}" in srv.read_log()
        # the image was created when the channel released its revision
        manifest = requests.get(f"{srv.url}/v2/hello/manifests/latest",
                                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        config = requests.get(f"{srv.url}/v2/hello/blobs/{manifest.json()['config']['digest']}")
        assert config.json()["created"] == "2024-05-31T16:08:37Z"
        publish("after a channel update")
        time.sleep(3.5)
        assert hello_says(srv, tmp_path, "whatever-tag") == "after a channel update"
    finally:
        srv.stop()


def test_names_users_type(tmp_path):
    srv = Server(str(tmp_path / "srv"), NIXERY_PKGS_PATH=str(PKGS)).start()
    try:
        assert requests.get(f"{srv.url}/v2/sdl2/1password/manifests/latest").status_code == 200
        r = requests.get(f"{srv.url}/v2/sdl3/hellp/manifests/latest")
        assert r.status_code == 404
        message = error_of(r)["message"]
        assert "sdl3 (did you mean SDL2?)" in message and "hellp (did you mean hello?)" in message
    finally:
        srv.stop()


def test_skopeo_lists_the_tags_of_a_git_source(git_server):
    """`latest` and the remote's branches and tags, through skopeo."""
    done = run(["skopeo", "list-tags", "--tls-verify=false", f"docker://{git_server.host}/hello"])
    listed = json.loads(done.stdout)
    assert listed["Tags"] == ["feature", "latest", "main", "v1"]


def test_channel_names_and_checked_commits_as_tags(channel_host, tmp_path):
    base, publish = channel_host
    old = publish("an older nixpkgs")
    head = publish("from the channel")
    publish("from another channel", channel="nixos-other")
    fork = publish("from someone's fork", channel="not-a-channel")
    # GitHub's compare API, as the check reads it: head is ahead of old
    os.makedirs(tmp_path / "www" / "compare")
    (tmp_path / "www" / "compare" / f"{old}...{head}").write_text('{"status": "ahead"}')
    srv = Server(str(tmp_path / "srv"), NIXERY_CHANNEL="nixos-test", NIXERY_CHANNEL_URL=base,
                 NIXERY_ARCHIVE_URL=base + "/archive/{rev}.tar.gz",
                 NIXERY_COMMIT_CHECK_URL=base + "/compare/{base}...{head}").start()
    try:
        assert hello_says(srv, tmp_path, "latest") == "from the channel"
        assert hello_says(srv, tmp_path, "nixos-other") == "from another channel"
        assert hello_says(srv, tmp_path, old) == "an older nixpkgs"
        r = requests.get(f"{srv.url}/v2/hello/manifests/{fork}")
        assert r.status_code == 404
        assert "not in the history of nixos-test" in error_of(r)["message"]
    finally:
        srv.stop()
