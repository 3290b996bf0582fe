"""nixpkgs channels as the package source, and commits of their history."""
from __future__ import annotations

import email.utils
import json
import re
import urllib.error
import urllib.request

from ..errors import RevisionNotFound, SourceUnavailable
from .source import COMMIT_RE, RESOLVE_TIMEOUT, Revision, Source

# Tags that name a channel when the operator lists none.
CHANNEL_TAG_RE = re.compile(r"^(nixos|nixpkgs)-[0-9a-z.-]+$")


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
