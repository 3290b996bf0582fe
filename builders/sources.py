"""Package sources: where the Nix expressions import the package set from."""
from __future__ import annotations

import abc
import re

CHANNEL_URL = "https://channels.nixos.org/{channel}/nixexprs.tar.xz"
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


class Source(abc.ABC):
    """One package source, turned into data for nix/image.nix."""

    @abc.abstractmethod
    def nix_source(self, tag: str) -> dict:
        """The `sourceJson` argument of nix/image.nix for an image pulled by `tag`."""

    @abc.abstractmethod
    def identity(self, tag: str) -> str:
        """What the manifest cache key records of the source for `tag`."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A line for people: what images are built from."""


class PathSource(Source):
    def __init__(self, path):
        self.path = path

    def nix_source(self, tag):
        return {"type": "path", "path": self.path}

    def identity(self, tag):
        return f"path:{self.path}"

    def describe(self):
        return f"the local package set at {self.path}"


class ChannelSource(Source):
    def __init__(self, channel):
        self.channel = channel
        self.url = CHANNEL_URL.format(channel=channel)

    def nix_source(self, tag):
        return {"type": "channel", "url": self.url}

    def identity(self, tag):
        return f"channel:{self.channel}"

    def describe(self):
        return f"the nixpkgs channel {self.channel}"


class GitSource(Source):
    def __init__(self, url):
        self.url = url

    def nix_source(self, tag):
        source = {"type": "git", "url": self.url}
        if COMMIT_RE.match(tag):
            source["rev"] = tag
        elif tag != "latest":
            source["ref"] = tag
        return source

    def identity(self, tag):
        return f"git:{self.url}@{tag}"

    def describe(self):
        return f"the git repository {self.url}"


def from_config(config) -> Source:
    if config.pkgs_path:
        return PathSource(config.pkgs_path)
    if config.pkgs_repo:
        return GitSource(config.pkgs_repo)
    return ChannelSource(config.effective_channel)
