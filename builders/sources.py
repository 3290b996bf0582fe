"""Package sources: what the Nix expressions import, pinned per pull.

A source resolves a tag to a `Revision`: what nix/image.nix fetches and
what the manifest cache key records.  How often a moving source is asked
again is the image service's business (builders/service.py).
"""
from __future__ import annotations

import abc
import email.utils
import hashlib
import json
import logging
import os
import re
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, replace

from . import git
from .errors import RevisionNotFound, SourceUnavailable

logger = logging.getLogger(__name__)

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
# Tags that name a channel when the operator lists none.
CHANNEL_TAG_RE = re.compile(r"^(nixos|nixpkgs)-[0-9a-z.-]+$")
# Resolving a revision is a small network call; it must never hang a pull.
RESOLVE_TIMEOUT = 30


@dataclass(frozen=True)
class Revision:
    identity: str     # recorded in the manifest cache key
    nix: dict         # the `sourceJson` argument of nix/image.nix
    description: str  # for people
    # False for a revision that can no longer be built from (a folder's
    # earlier contents): only images built from it are served
    buildable: bool = True
    # when the revision was made, where the source says so without Nix (a
    # channel's release); a git commit's time comes from Nix (nix/image.nix)
    created: float | None = None

    def to_dict(self):
        return asdict(self)

    @property
    def pin(self) -> str:
        """What pins it: the commit, or the folder's content hash."""
        return self.identity.rpartition("@")[2]


class Source(abc.ABC):
    """One package source."""

    #: whether every tag a user pulls picks a revision (none means `latest`)
    tags_select_revision = False
    #: what tags mean here, for the landing page
    tags_help = "The only tag is latest."
    #: whether the revisions images were built from stay tags (a folder's)
    keeps_revisions = False

    def selector(self, tag: str) -> str | None:
        """What of `tag` matters to this source; None when it names nothing
        here (the registry then takes it as `latest`, unless strict)."""
        if self.tags_select_revision or tag == "latest":
            return tag
        return None

    def immutable(self, tag: str) -> bool:
        """Whether `tag` always names the same revision."""
        return False

    def tags(self) -> list[str]:
        """The tags that name a revision here (any tag at all is `latest`
        too, unless the registry is strict about tags)."""
        return ["latest"]

    def check(self) -> None:
        """Raise SourceUnavailable when the source does not answer now."""
        self._resolve("latest")

    def admit(self, revision: Revision) -> None:
        """Raise RevisionNotFound when `revision` must not be built here (a
        commit tag outside the source's history), SourceUnavailable when
        that cannot be told now.  Asked only before a build: an image
        stored already is served without asking the source anything."""

    def resolve(self, tag: str) -> Revision:
        """The revision `tag` names now."""
        revision = self._resolve(self.selector(tag) or "latest")
        if not self.immutable(tag):
            logger.info("%s resolved to %s", self.describe(), revision.description)
        return revision

    @abc.abstractmethod
    def _resolve(self, tag: str) -> Revision:
        """Find what `tag` names now."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A line for people: what images are built from."""


def tree_hash(root: str) -> str:
    """A hash of a folder's files as Nix would read them (names, modes,
    contents, symlink targets), skipping version-control metadata."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in (".git", ".hg", ".svn"))
        rel = os.path.relpath(dirpath, root)
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            path = os.path.join(dirpath, name)
            h.update(f"{rel}/{name}\0".encode("utf-8", "surrogateescape"))
            if os.path.islink(path):
                h.update(b"link\0" + os.readlink(path).encode("utf-8", "surrogateescape"))
                continue
            h.update(b"x" if os.access(path, os.X_OK) else b"-")
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            h.update(b"\0")
    return h.hexdigest()


FOLDER_TAG_RE = re.compile(r"^[0-9a-f]{12}$")


class PathSource(Source):
    """A local folder: its contents are the revision.  `latest` is the
    folder as it is now; the short content hash of a revision images were
    built from names that revision (builders/revisions.py keeps them)."""

    keeps_revisions = True
    tags_help = ("The tag latest is the folder as it is now; the content hash of a revision "
                 "images were built from (its first 12 hex digits, as above) pulls those "
                 "images again.")

    def __init__(self, path):
        self.path = path

    def check(self):
        # hashing a whole folder (nixpkgs: tens of thousands of files) is
        # what a pull does; that the folder is there is enough here
        if not os.path.isfile(os.path.join(self.path, "default.nix")):
            raise SourceUnavailable(f"{self.path}/default.nix is not there")

    @staticmethod
    def revision_tag(revision: Revision) -> str:
        """The tag that names `revision`: its content hash, shortened."""
        return revision.pin[:12]

    @staticmethod
    def earlier(revision: Revision) -> Revision:
        """`revision` once the folder no longer holds it."""
        return replace(revision, buildable=False,
                       description=revision.description.replace(
                           "(contents ", "(earlier contents ", 1))

    def _resolve(self, tag):
        digest = tree_hash(self.path)
        return Revision(f"path:{self.path}@{digest}", {"type": "path", "path": self.path},
                        f"{self.path} (contents {digest[:12]})")

    def describe(self):
        return f"the local package set at {self.path}"


class ChannelSource(Source):
    """nixpkgs channels.  `latest` is the configured channel; a tag that is
    a channel name picks that channel (any `nixos-*` or `nixpkgs-*` name,
    or only those of `allowed`); a commit tag picks that nixpkgs commit.
    A channel is resolved to the commit it points at and Nix fetches
    nixpkgs at that commit, so one revision always gives the same image.

    GitHub serves commits of any fork of nixpkgs under nixpkgs' own archive
    URL, so a commit tag is built only once `check_url` (GitHub's compare
    API by default) says it is in the history of an allowed channel's head
    (the configured channel's, when none are listed), unless `any_commit`.
    """

    tags_help = ("The tag you pull picks the revision: latest is {channel}, a channel "
                 "name picks that channel, and a commit of its history picks that commit.")

    def __init__(self, channel, channel_url, archive_url, *, allowed=None, check_url=None,
                 any_commit=False):
        self.channel = channel
        self.channel_url = channel_url.rstrip("/")
        self.archive_url = archive_url
        self.allowed = tuple(allowed) if allowed else None
        self.check_url = check_url
        self.any_commit = any_commit
        self._verified: set[str] = set()  # commits found in a channel's history
        self.tags_help = self.tags_help.format(channel=channel)

    def _revision_url(self, channel):
        return f"{self.channel_url}/{channel}/git-revision"

    def selector(self, tag):
        if tag == "latest" or COMMIT_RE.match(tag):
            return tag
        if self.allowed is not None:
            return tag if tag in self.allowed else None
        return tag if CHANNEL_TAG_RE.match(tag) else None

    def immutable(self, tag):
        return bool(COMMIT_RE.match(tag))

    def tags(self):
        return sorted({"latest", *(self.allowed or ())})

    def _resolve(self, tag):
        if COMMIT_RE.match(tag):
            return Revision(f"nixpkgs@{tag}", self._archive(tag), f"commit {tag[:12]}")
        channel = self.channel if tag == "latest" else tag
        commit, released = self._head(channel, dated=True)
        return Revision(f"channel:{channel}@{commit}", self._archive(commit),
                        f"{channel} at {commit[:12]}", created=released)

    def admit(self, revision):
        commit = revision.pin
        if not revision.identity.startswith("nixpkgs@") or self.any_commit \
                or commit in self._verified:
            return  # a channel's own head, or checked already
        self._check(commit)
        self._verified.add(commit)

    def _archive(self, commit):
        return {"type": "tarball", "url": self.archive_url.format(rev=commit)}

    def _fetch(self, url, what, dated=False):
        """The body at `url` (and, `dated`, its Last-Modified time or None)."""
        try:
            with urllib.request.urlopen(url, timeout=RESOLVE_TIMEOUT) as resp:
                body = resp.read(1 << 20)
                if not dated:
                    return body
                try:
                    modified = email.utils.parsedate_to_datetime(
                        resp.headers["Last-Modified"]).timestamp()
                except (TypeError, ValueError):
                    modified = None
                return body, modified
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise
            raise SourceUnavailable(f"could not {what}: {url} answered {e.code} {e.reason}") \
                from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise SourceUnavailable(f"could not {what}: cannot fetch {url}: {reason}") from None

    def _head(self, channel, dated=False):
        """The commit `channel` points at now (and, `dated`, when the channel
        released it: when its git-revision was published, or None)."""
        url = self._revision_url(channel)
        try:
            commit, released = self._fetch(url, f"resolve the channel {channel}", dated=True)
            commit = commit[:200]
        except urllib.error.HTTPError:
            if channel != self.channel:
                raise RevisionNotFound(f"there is no channel {channel} ({url} answered 404)") \
                    from None
            raise SourceUnavailable(f"could not resolve the channel {channel}: {url} answered "
                                    "404 Not Found") from None
        commit = commit.decode("ascii", "replace").strip()
        if not COMMIT_RE.match(commit):
            raise SourceUnavailable(f"{url} does not hold a commit hash (got {commit[:60]!r})")
        return (commit, released) if dated else commit

    def _check(self, commit):
        """Refuse a commit that no allowed channel's head descends from."""
        channels = self.allowed or (self.channel,)
        for channel in channels:
            head = self._head(channel)
            if head == commit:
                return
            url = self.check_url.format(base=commit, head=head)
            try:
                status = json.loads(self._fetch(url, f"check commit {commit[:12]}")).get("status")
            except urllib.error.HTTPError:
                status = None  # unknown to the repository: in no history
            except ValueError:
                raise SourceUnavailable(f"{url} did not answer JSON") from None
            if status in ("ahead", "identical"):  # head descends from the commit
                return
        raise RevisionNotFound(
            f"commit {commit} is not in the history of {', '.join(channels)}: this registry "
            "builds commits of its channels only")

    def describe(self):
        return f"the nixpkgs channel {self.channel}"


class GitSource(Source):
    """A git repository; the tag picks the revision: `latest` is the remote's
    default branch, 40 hex digits a commit, anything else a branch or tag.

    A commit tag is built only when one of the remote's branches or tags
    holds it.  Remotes advertise other refs too (GitHub serves every pull
    request, forks' included, as `refs/pull/*`), and a commit of those
    would be anyone's package set built under this registry's name.  A
    commit at a branch's or tag's tip is seen in `git ls-remote`; any other
    is looked for in a mirror of the branches and tags holding commits only
    (builders/git.py), kept in `mirror_root`.
    """

    tags_select_revision = True
    tags_help = "The tag you pull picks the revision: latest, a branch, a tag or a commit."

    def __init__(self, url, mirror_root=None):
        self.url = url
        self._mirror = git.Mirror(url, mirror_root) if mirror_root else None
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
        return git.ls_remote(self.url, *patterns, timeout=RESOLVE_TIMEOUT, symref=symref)

    def describe(self):
        return f"the git repository {self.url}"


def from_config(config) -> Source:
    if config.pkgs_path:
        return PathSource(config.pkgs_path)
    if config.pkgs_repo:
        return GitSource(config.pkgs_repo, mirror_root=os.path.join(config.state_path, "git"))
    return ChannelSource(config.effective_channel, config.channel_url, config.archive_url,
                         allowed=config.channels, check_url=config.commit_check_url,
                         any_commit=config.any_commit)
