"""A git repository as the package source (`GitSource`), and what it needs
of the remote: its refs (`git ls-remote`), and which commits its branches
and tags hold (a local mirror of their commits).  Every git command goes
through `run`, so a remote that cannot be read or answers too slowly is
always a SourceUnavailable naming it."""
from __future__ import annotations

import hashlib
import os
import shutil
import threading

from storage import filelock
from .. import process
from ..errors import RevisionNotFound, SourceUnavailable
from .source import COMMIT_RE, RESOLVE_TIMEOUT, Revision, Source

# Fetching the commits of a large repository's branches (nixpkgs: some
# hundreds of MB without trees) takes a while the first time.
MIRROR_TIMEOUT = 600


def run(url, *args, timeout, check=True):
    """`git *args` about the remote `url`; SourceUnavailable when git is
    missing, too slow, or (with `check`) fails."""
    try:
        done = process.run(["git", *args], timeout=timeout)
    except process.Timeout:
        raise SourceUnavailable(f"git, reading {url}, took longer than {timeout}s") from None
    except FileNotFoundError:
        raise SourceUnavailable("git is not installed") from None
    if check and done.returncode != 0:
        raise SourceUnavailable(f"cannot read the git repository {url}: git says "
                                f"{said(done.stderr_tail)}", log_tail=done.stderr_tail)
    return done


def said(stderr: str) -> str:
    """What git's errors say, as one sentence: its `fatal:` and `error:`
    lines, without the advice it prints after them."""
    lines = [line.split(": ", 1)[1].strip().rstrip(".") for line in stderr.splitlines()
             if line.startswith(("fatal: ", "error: "))]
    if not lines:  # no error of git's own: its last words
        lines = [line.strip() for line in stderr.strip().splitlines()[-1:]] or ["nothing"]
    return "; ".join(dict.fromkeys(lines)) + "."


def ls_remote(url, *patterns, timeout, symref=False) -> dict:
    """Ref name -> commit (and `symref:<name>` -> the ref it points at).
    Options (`--heads`) may stand among the patterns; the patterns are
    data, arguments to git after `--`."""
    options = [p for p in patterns if p.startswith("--")]
    patterns = [p for p in patterns if not p.startswith("--")]
    done = run(url, "ls-remote", *(["--symref"] if symref else []), *options, "--", url,
               *patterns, timeout=timeout)
    refs = {}
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        value, _, name = line.partition("\t")
        if value.startswith("ref: "):
            refs["symref:" + name] = value[5:]
        else:
            refs[name] = value
    return refs


class Mirror:
    """The commits (no trees, no files: a `--filter=tree:0` clone) of a
    remote's branches and tags, kept in `root`, fetched again when asked
    for a commit it does not hold yet; one fetch at a time, across
    processes too."""

    def __init__(self, url, root):
        self.url = url
        self.path = os.path.join(root, hashlib.sha256(url.encode()).hexdigest()[:16] + ".git")
        self._lock = threading.Lock()

    def holds(self, commit) -> bool:
        """Whether a branch or tag of the remote holds `commit`."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with self._lock, filelock.acquire(self.path + ".lock"):
            if not os.path.isdir(self.path):
                shutil.rmtree(self.path + ".new", ignore_errors=True)
                run(self.url, "clone", "--bare", "--quiet", "--filter=tree:0", "--", self.url,
                    self.path + ".new", timeout=MIRROR_TIMEOUT)
                os.rename(self.path + ".new", self.path)
            elif self._contains(commit):
                return True
            # by the remote's name, so that its filter applies: commits only
            run(self.url, "-C", self.path, "fetch", "--quiet", "--prune", "--force", "origin",
                "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*", timeout=MIRROR_TIMEOUT)
            return self._contains(commit)

    def _contains(self, commit) -> bool:
        done = run(self.url, "-C", self.path, "for-each-ref", "--count=1", "--contains", commit,
                   "--", "refs/heads", "refs/tags", timeout=MIRROR_TIMEOUT, check=False)
        return done.returncode == 0 and bool(done.stdout.strip())


class GitSource(Source):
    """A git repository; the tag picks the revision: `latest` is the remote's
    default branch, 40 hex digits a commit, anything else a branch or tag.

    A commit tag is built only when one of the remote's branches or tags
    holds it.  Remotes advertise other refs too (GitHub serves every pull
    request, forks' included, as `refs/pull/*`), and a commit of those
    would be anyone's package set built under this registry's name.  A
    commit at a branch's or tag's tip is seen in `git ls-remote`; any other
    is looked for in a mirror of the branches and tags holding commits only
    (`Mirror`), kept in `mirror_root`.
    """

    tags_select_revision = True
    tags_help = "The tag you pull picks the revision: latest, a branch, a tag or a commit."

    def __init__(self, url, mirror_root=None):
        self.url = url
        self._mirror = Mirror(url, mirror_root) if mirror_root else None
        self._checked: set[str] = set()  # commits found on a branch or tag

    def immutable(self, tag):
        return bool(COMMIT_RE.match(tag))

    def _resolve(self, tag):
        if self.immutable(tag):
            return Revision(f"git:{self.url}@{tag}",
                            {"type": "git", "url": self.url, "rev": tag, "allRefs": True},
                            f"commit {tag[:12]}")
        if tag == "latest":
            refs = self._ls_remote("HEAD", symref=True)
            commit = refs.get("HEAD")
            ref = refs.get("symref:HEAD", "HEAD")
        else:
            # the tag is data: an argument to git, never part of a command line string
            # an annotated tag's own object, and (`^{}`) the commit it names
            refs = self._ls_remote(f"refs/heads/{tag}", f"refs/tags/{tag}",
                                   f"refs/tags/{tag}^{{}}")
            ref, commit = next(
                ((r, refs[r + "^{}"] if r + "^{}" in refs else refs[r])
                 for r in (f"refs/heads/{tag}", f"refs/tags/{tag}") if r in refs),
                (None, None))
        if not commit:
            raise RevisionNotFound(
                f"tag {tag!r} names no branch or tag in {self.url}; pull a branch, a tag, "
                "a full commit hash, or latest for the default branch")
        return Revision(f"git:{self.url}@{commit}",
                        {"type": "git", "url": self.url, "rev": commit, "ref": ref},
                        f"{ref} at {commit[:12]}")

    def admit(self, revision):
        if "ref" not in revision.nix:  # a commit tag; a ref's commit is its tip
            self._check_commit(revision.pin)

    def _check_commit(self, commit):
        """Return when a branch or tag of the remote holds `commit`; else
        RevisionNotFound."""
        if commit in self._checked:
            return
        tips = self._ls_remote("--heads", "--tags")
        if commit in tips.values() or (self._mirror is not None and self._mirror.holds(commit)):
            self._checked.add(commit)
            return
        raise RevisionNotFound(
            f"commit {commit} is on no branch or tag of {self.url}: only commits that the "
            "repository's branches and tags hold are built (not those of pull requests or "
            "forks)")

    def tags(self):
        """`latest`, and the remote's branches and tags by name."""
        names = {"latest"}
        for ref in self._ls_remote("--heads", "--tags"):
            for prefix in ("refs/heads/", "refs/tags/"):
                if ref.startswith(prefix):
                    names.add(ref[len(prefix):].removesuffix("^{}"))
        return sorted(names)

    def _ls_remote(self, *patterns, symref=False) -> dict:
        return ls_remote(self.url, *patterns, timeout=RESOLVE_TIMEOUT, symref=symref)

    def describe(self):
        return f"the git repository {self.url}"
