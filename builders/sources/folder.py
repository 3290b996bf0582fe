"""A local folder as the package source: its contents are the revision."""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import replace

from ..errors import SourceUnavailable
from .source import Revision, Source


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
    built from names that revision (builders/sources/revisions.py keeps them)."""

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
