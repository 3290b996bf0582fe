"""The image's last layer: symlinks from / into the store, like buildEnv."""
from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

# Entries of a package's output that never go into /.
SKIP_TOP = {"nix-support", "nix", "tmp", "proc", "sys", "dev"}


def _entries(path):
    try:
        return sorted(os.listdir(path))
    except (NotADirectoryError, FileNotFoundError):
        return []


def _merge(tree, rel, sources):
    """Link `rel` to the one source providing it; where several provide a
    directory, make a real directory and merge below it.  On a clash
    between a file and anything else the first package wins."""
    dirs = [s for s in sources if os.path.isdir(s)]
    if len(sources) == 1 or len(dirs) < len(sources):
        if len(sources) > 1:
            logger.info("%s is provided by several packages; using %s", rel, sources[0])
        tree[rel] = ("symlink", sources[0])
        return
    tree[rel] = ("dir", 0o755)
    _merge_children(tree, rel, dirs)


def _merge_children(tree, rel, dirs):
    names = {}
    for d in dirs:
        for name in _entries(d):
            names.setdefault(name, []).append(os.path.join(d, name))
    for name in sorted(names):
        _merge(tree, f"{rel}/{name}" if rel else name, names[name])


def symlink_tree(outputs) -> dict:
    """{relative path: ("dir", mode) | ("symlink", target)} for the image root.

    `outputs` are the requested packages' store paths, in a fixed order.
    Top-level directories (/bin, /lib, /etc, ...) are always real
    directories, so their entries from several packages sit side by side.
    """
    tree = {}
    top = {}
    for out in outputs:
        for name in _entries(out):
            if name not in SKIP_TOP:
                top.setdefault(name, []).append(os.path.join(out, name))
    for name in sorted(top):
        sources = top[name]
        dirs = [s for s in sources if os.path.isdir(s)]
        if len(dirs) == len(sources):
            tree[name] = ("dir", 0o755)
            _merge_children(tree, name, dirs)
        else:
            _merge(tree, name, sources)
    tree["tmp"] = ("dir", 0o1777)
    env = tree.get("bin/env")
    if env and env[0] == "symlink" and "usr/bin/env" not in tree:
        tree.setdefault("usr", ("dir", 0o755))
        if tree["usr"][0] == "dir":
            tree.setdefault("usr/bin", ("dir", 0o755))
            if tree["usr/bin"][0] == "dir":
                tree["usr/bin/env"] = env
    return tree
