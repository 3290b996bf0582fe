"""A git remote as a package source needs it: its refs (`git ls-remote`),
and which commits its branches and tags hold (a local mirror of their
commits).  Every git command goes through `run`, so a remote that cannot be
read or answers too slowly is always a SourceUnavailable naming it."""
from __future__ import annotations

import hashlib
import os
import shutil
import threading

from storage import filelock
from . import process
from .errors import SourceUnavailable

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
