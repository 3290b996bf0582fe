"""Close matches for a misspelt package name, for error messages and the lookup page."""
from __future__ import annotations

import difflib


def close_matches(name, candidates, n=3) -> list[str]:
    """Up to `n` of `candidates` that look like `name`, compared case-insensitively."""
    folded = {}
    for c in candidates:
        folded.setdefault(c.lower(), c)
    matches = difflib.get_close_matches(name.lower(), list(folded), n=n, cutoff=0.6)
    return [folded[m] for m in matches]
