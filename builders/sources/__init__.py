"""Package sources: what the Nix expressions import, pinned per pull.

Each kind resolves a tag to a revision (source.py): a local folder
(folder.py), nixpkgs channels (channel.py) or a git repository (git.py);
what a tag names now is asked as seldom as allowed, and shared through
storage (revisions.py).
"""
from __future__ import annotations

import os

from .channel import ChannelSource
from .folder import PathSource
from .git import GitSource
from .source import Source


def from_config(config) -> Source:
    """The source the configuration names (app/config.py's Config)."""
    if config.pkgs_path:
        return PathSource(config.pkgs_path)
    if config.pkgs_repo:
        return GitSource(config.pkgs_repo, mirror_root=os.path.join(config.state_path, "git"))
    return ChannelSource(config.effective_channel, config.channel_url, config.archive_url,
                         allowed=config.channels, check_url=config.commit_check_url,
                         any_commit=config.any_commit)
