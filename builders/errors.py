"""Domain errors of the image builder; app/errors.py maps them to the wire."""
from __future__ import annotations


class BuildError(Exception):
    """Base of every failure to produce an image."""

    def __init__(self, message, *, log_tail=""):
        super().__init__(message)
        self.message = message
        self.log_tail = log_tail

    def to_dict(self) -> dict:
        """The error as data, to hand to requests in other processes."""
        return {"type": type(self).__name__, "attrs": dict(self.__dict__)}

    @staticmethod
    def from_dict(data) -> "BuildError":
        cls = next((c for c in _all_subclasses(BuildError) if c.__name__ == data["type"]),
                   BuildError)
        error = cls.__new__(cls)
        Exception.__init__(error, data["attrs"].get("message", ""))
        error.__dict__.update(data["attrs"])
        if isinstance(error, PackagesNotFound):
            error.missing = [(name, list(matches)) for name, matches in error.missing]
        return error


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


class PackagesNotFound(BuildError):
    """Some requested attribute paths do not exist in the package source."""

    def __init__(self, missing):
        # missing: list of (name, [close matches])
        self.missing = missing
        parts = []
        for name, matches in missing:
            hint = f" (did you mean {', '.join(matches)}?)" if matches else ""
            parts.append(f"{name}{hint}")
        noun = "package" if len(missing) == 1 else "packages"
        super().__init__(f"{noun} not found in the package source: {'; '.join(parts)}")


class PackageUnbuildable(BuildError):
    """A package exists but Nix refuses it (unfree, broken, not a derivation, ...)."""


class PackagesRefused(PackageUnbuildable):
    """Nix evaluated the packages and refused them: the same at the same revision."""


class PlatformUnsupported(PackagesRefused):
    """A requested package is not available on the image's platform (its
    meta.platforms): an index leaves that platform out."""


class BuildFailed(BuildError):
    """Nix tried to build and the build failed."""


class BuildInterrupted(BuildError):
    """The build was stopped by trouble of the machine's, not by anything
    the image is: its builder killed by a signal (the out-of-memory
    killer), a full disk, a Nix daemon or remote builder that cannot be
    reached, no builder for the image's platform.  A later pull may well
    build it, so it is never the image's verdict."""

    # What a client is told to wait, and how long the failure answers new
    # pulls of the image without Nix (builders/jobs/failures.py)
    retry_after = 10

    def __init__(self, message, *, cause, log_tail=""):
        super().__init__(message, log_tail=log_tail)
        # signal | disk | nix-daemon | remote-builder | no-builder | setup (no Nix)
        # | nix-gc (DerivationsCollected)
        self.cause = cause


class DerivationsCollected(BuildInterrupted):
    """A garbage collection of the Nix store deleted derivations between
    their evaluation and their build (nothing roots them in between): the
    packages are evaluated again, and if it happens again the pull is told
    to retry, as for any trouble of the machine's.  Not a verdict on the
    image."""

    def __init__(self, message, *, log_tail=""):
        super().__init__(message, cause="nix-gc", log_tail=log_tail)


class BuildTimeout(BuildError):
    """The Nix work for one image outlived NIX_TIMEOUT."""

    def __init__(self, limit, *, log_tail=""):
        self.limit = limit
        super().__init__(
            f"building the image took longer than the {limit:g}s limit (NIX_TIMEOUT); "
            "the build was stopped", log_tail=log_tail)


class SourceUnavailable(BuildError):
    """The package source could not be fetched."""


class InvalidImage(BuildError):
    """The image name asks for something the builder cannot make."""


class RevisionNotFound(BuildError):
    """The tag names nothing in the package source."""


class BuildQueueFull(BuildError):
    """Too many builds at once; the client should retry after `retry_after` seconds."""

    def __init__(self, message, *, retry_after):
        super().__init__(message)
        self.retry_after = retry_after


class QuotaExceeded(BuildError):
    """The client may start no more builds now (NIXERY_CLIENT_BUILDS); it
    should retry after `retry_after` seconds."""

    def __init__(self, message, *, retry_after):
        super().__init__(message)
        self.retry_after = retry_after


class BuildInProgress(BuildError):
    """The image is still being made when the pull has waited as long as it
    may (NIXERY_PULL_WAIT); the client should retry after `retry_after`."""

    def __init__(self, progress: str, seconds: float, *, retry_after: int):
        self.progress = progress
        self.seconds = seconds
        self.retry_after = retry_after
        super().__init__(f"still building ({progress}, {seconds:.0f}s so far); "
                         f"retry in {retry_after}s")
