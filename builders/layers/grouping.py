"""Groups a runtime closure into layers within a budget, by popularity.

What an image's user pays for is bytes pulled, so a layer is worth its own
blob when other images will carry the identical one:

1. The requested packages, and every path that is popular (needed by many
   packages or images, see `popular_threshold`), head a group of their own.
2. Every other path joins the group of the head it is only reachable
   through: its immediate dominator, in the reference graph where edges
   into heads are cut.  A path two heads reach alike is not dominated by
   either and heads a group itself, so both images carry the same layer.
3. Groups are ranked by popularity times size; while there are more than
   the budget, the lowest-ranked are merged into one last layer.

The result depends only on the closure, the roots and the popularity
counts, never on what is cached, and a layer's identity is the set of its
store paths, so an identical group in another image is the identical blob.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Iterable, Mapping

from ..nixbuild.closure import StorePath

logger = logging.getLogger(__name__)

# Bump when the bytes a group of paths turns into change, so old records
# of stored layers are not reused for a different tarball.
LAYER_FORMAT = "1"

# A path counts as popular when at least this many packages (or images)
# need it...
MIN_POPULAR = 2
# ... and, for counts over a whole package set (NIX_POPULARITY_URL), at
# least this share of the most needed path's count: over all of nixpkgs
# nearly every path is needed twice, and separating all of them would cut
# packages from the private dependencies they share layers with.
POPULAR_SHARE = 0.01


def layer_id(paths) -> str:
    """A layer's identity: the set of store paths in it (and the tar format)."""
    h = hashlib.sha256(f"layer-format {LAYER_FORMAT}\n".encode())
    for p in sorted(paths):
        h.update(p.encode() + b"\n")
    return h.hexdigest()


def popular_threshold(popularity: Mapping[str, int]) -> float:
    """The count from which a path is popular, for counts over a package set."""
    top = max(popularity.values(), default=0)
    return max(MIN_POPULAR, top * POPULAR_SHARE)


def largest_first(groups, sizes: Mapping[str, int] | None = None) -> list[int]:
    """The indexes of `groups` in the order to make their layers: the
    biggest first (by `sizes`, bytes of each store path), so that on a
    few cores the last layer to finish is a small one, not one that
    started late and runs alone while the other cores have nothing left.
    Without `sizes`, their own order."""
    if not sizes:
        return list(range(len(groups)))
    return sorted(range(len(groups)), key=lambda i: -sum(sizes.get(p, 0) for p in groups[i]))


def group(closure: list[StorePath], budget: int, popularity: Mapping[str, int] | None = None,
          roots: Iterable[str] | None = None, threshold: float | None = None
          ) -> list[tuple[str, ...]]:
    """Split `closure` into at most `budget` layers, each a sorted tuple of paths.

    `popularity` maps a store path's name without its hash (`StorePath.name`)
    to how many packages or images need it; `roots` are the requested
    packages' paths (by default, the paths nothing else refers to); paths
    with a count of at least `threshold` are popular (by default
    `popular_threshold(popularity)`).
    """
    if budget < 1:
        raise ValueError("layer budget must be at least 1")
    popularity = popularity or {}
    by_path = {p.path: p for p in closure}
    order = sorted(by_path)
    if not order:
        return []
    if roots is None:
        referred = {r for p in closure for r in p.references if r != p.path}
        roots = [p for p in order if p not in referred]
    heads = {r for r in roots if r in by_path}
    if threshold is None:
        threshold = popular_threshold(popularity)
    heads.update(p for p in order if popularity.get(by_path[p].name, 0) >= threshold)

    owner = _owners(order, by_path, heads)
    members: dict[str, list[str]] = {}
    for p in order:
        members.setdefault(owner[p], []).append(p)

    def rank(head):
        size = sum(by_path[p].nar_size for p in members[head])
        return (-popularity.get(by_path[head].name, 0) * size, -size, head)

    ranked = sorted(members, key=rank)
    groups = [tuple(members[h]) for h in ranked]
    if len(groups) > budget:
        kept, rest = groups[:budget - 1], groups[budget - 1:]
        merged = tuple(sorted(p for g in rest for p in g))
        logger.debug("merged %d of %d groups into one layer to keep within %d",
                     len(rest), len(groups), budget)
        groups = kept + [merged]
    return groups


def _owners(order, by_path, heads) -> dict[str, str]:
    """The head of each path's group: the child of the virtual root that
    dominates it, in the graph root -> heads -> their references, with the
    edges into heads cut."""
    ROOT = ""  # sorts before every path; never a store path
    succ = {ROOT: sorted(heads)}
    for p in order:
        succ[p] = [r for r in by_path[p].references
                   if r != p and r in by_path and r not in heads]
    # Paths that no head reaches (roots given too narrowly) head themselves.
    seen = _reachable(ROOT, succ)
    stray = [p for p in order if p not in seen]
    if stray:
        heads = set(heads) | set(stray)
        succ[ROOT] = sorted(heads)
        for p in order:
            succ[p] = [r for r in succ[p] if r not in heads]
    idom = _dominators(ROOT, succ)
    owner = {}
    for p in order:
        chain = []
        q = p
        while q not in owner and idom[q] != ROOT:
            chain.append(q)
            q = idom[q]
        head = owner.get(q, q)
        for c in chain:
            owner[c] = head
        owner[q] = head
    return owner


def _reachable(start, succ):
    seen = {start}
    stack = [start]
    while stack:
        for n in succ[stack.pop()]:
            if n not in seen:
                seen.add(n)
                stack.append(n)
    return seen


def _dominators(start, succ) -> dict[str, str]:
    """Immediate dominators (Cooper, Harvey and Kennedy's iterative method)."""
    # reverse postorder, iteratively: closures can be deeper than Python's stack
    post = []
    seen = {start}
    stack = [(start, iter(succ[start]))]
    while stack:
        node, it = stack[-1]
        for n in it:
            if n not in seen:
                seen.add(n)
                stack.append((n, iter(succ[n])))
                break
        else:
            stack.pop()
            post.append(node)
    index = {n: i for i, n in enumerate(post)}  # postorder number
    preds: dict[str, list[str]] = {n: [] for n in post}
    for n in post:
        for m in succ[n]:
            preds[m].append(n)
    idom = {start: start}
    rpo = list(reversed(post))

    def intersect(a, b):
        while a != b:
            while index[a] < index[b]:
                a = idom[a]
            while index[b] < index[a]:
                b = idom[b]
        return a

    changed = True
    while changed:
        changed = False
        for n in rpo[1:]:
            new = None
            for m in preds[n]:
                if m in idom:
                    new = m if new is None else intersect(m, new)
            if idom.get(n) != new:
                idom[n] = new
                changed = True
    return idom
