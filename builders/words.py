"""Words for people: counts with their nouns in the right number."""
from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`1 build`, `2 builds`, `0 builds`; `plural` for nouns that do not
    take an `s` (`1 store path`, `3 store paths` need none)."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"
