"""Store paths as Nix reports them: a runtime closure's paths, their sizes,
references and the hashes of their NARs."""
from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class StorePath:
    path: str
    nar_size: int
    references: tuple[str, ...]
    nar_hash: str = ""  # sha256 of its NAR, in hex

    @property
    def name(self) -> str:
        """The path's name without its hash, e.g. `glibc-2.37`."""
        return os.path.basename(self.path).split("-", 1)[-1]


def parse_path_info(data) -> list[StorePath]:
    """Nix before 2.19 prints a list of objects, later versions an object keyed by path."""
    if isinstance(data, dict):
        items = [dict(info, path=path) for path, info in data.items()]
    else:
        items = data
    result = [StorePath(i["path"], int(i["narSize"]), tuple(sorted(i.get("references", ()))),
                        sha256_hex(i.get("narHash", "")))
              for i in items]
    return sorted(result, key=lambda p: p.path)


NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"


def sha256_hex(nix_hash: str) -> str:
    """A sha256 as Nix prints it (SRI `sha256-<base64>`, or `sha256:` and
    Nix's base-32 or hex) in hex; "" for anything else."""
    if nix_hash.startswith("sha256-"):
        try:
            raw = base64.b64decode(nix_hash[7:], validate=True)
        except ValueError:
            return ""
        return raw.hex() if len(raw) == 32 else ""
    if not nix_hash.startswith("sha256:"):
        return ""
    text = nix_hash[7:]
    if re.fullmatch(r"[0-9a-f]{64}", text):
        return text
    if len(text) != 52 or any(c not in NIX32 for c in text):
        return ""
    out = bytearray(32)
    for n, c in enumerate(reversed(text)):  # Nix's base 32 runs from the last character
        digit, bit = NIX32.index(c), n * 5
        i, j = divmod(bit, 8)
        out[i] |= (digit << j) & 0xFF
        if i + 1 < 32:
            out[i + 1] |= digit >> (8 - j)
    return out.hex()
