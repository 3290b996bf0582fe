"""The distribution spec's grammars and the registry's route shapes, defined once."""
import re

# A repository name: path components of lower-case alphanumerics joined by
# single separators, 255 characters at most.
NAME_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{NAME_COMPONENT}(?:/{NAME_COMPONENT})*")
NAME_MAX = 255


def valid_name(name: str) -> bool:
    return len(name) <= NAME_MAX and NAME_RE.fullmatch(name) is not None


TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")

# The digests this registry makes and serves.
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")

# /v2/<name>/(manifests|blobs|referrers)/<reference>: names hold '/', so
# the route is matched on its trailing part.
# DOTALL: a name or reference holding a newline must reach the grammar
# checks (and fail there), not slip past the route.
ROUTE_RE = re.compile(r"(?P<name>.*)/(?P<kind>manifests|blobs|referrers)/(?P<reference>[^/]*)", re.DOTALL)
# The referrers tag schema: the tag that stands for a digest's referrers.
REFERRERS_TAG_RE = re.compile(r"sha256-(?P<hex>[0-9a-f]{64})")
# /v2/<name>/tags/list
TAGS_RE = re.compile(r"(?P<name>.*)/tags/list", re.DOTALL)
