"""Words for people: counts with their nouns in the right number, and close
matches for a misspelt package name (error messages, the lookup page)."""
from __future__ import annotations

import difflib


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`1 build`, `2 builds`, `0 builds`; `plural` for nouns that do not
    take an `s` (`1 store path`, `3 store paths` need none)."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"


def close_matches(name, candidates, n=3) -> list[str]:
    """Up to `n` of `candidates` that look like `name`, compared case-insensitively."""
    folded = {}
    for c in candidates:
        folded.setdefault(c.lower(), c)
    matches = difflib.get_close_matches(name.lower(), list(folded), n=n, cutoff=0.6)
    return [folded[m] for m in matches]
