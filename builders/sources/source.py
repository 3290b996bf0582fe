"""What a package source is: it resolves a tag to a `Revision`, what
nix/image.nix fetches and what the manifest cache key records.  How often
a moving source is asked again is builders/sources/revisions.py's business.
"""
from __future__ import annotations

import abc
import logging
import re
from dataclasses import asdict, dataclass

logger = logging.getLogger(__name__)

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
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
