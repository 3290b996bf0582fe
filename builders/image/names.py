"""Image names: which packages, for which system."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from . import platforms
from ..errors import InvalidImage
from .platforms import Platform

# Meta-packages, recognised as leading components of a name.
SHELL_PACKAGES = ("bashInteractive", "cacert", "coreutils", "iana-etc", "moreutils", "nano")

META_PACKAGES = ("shell", *platforms.PREFIXES)


def misplaced_meta(name: str) -> str | None:
    """Why `name` cannot be read when it names a meta-package after a
    package (`hello/shell`): meta-packages must come first."""
    components = name.split("/")
    lead = 0
    while lead < len(components) and components[lead] in META_PACKAGES:
        lead += 1
    late = [c for c in components[lead:] if c in META_PACKAGES]
    if not late:
        return None
    metas = [c for c in components if c in META_PACKAGES]
    fixed = "/".join(metas + [c for c in components if c not in META_PACKAGES])
    if len(late) == 1:
        return f"{late[0]} is a meta-package; put it first: {fixed}"
    return f"{', '.join(late)} are meta-packages; put them first: {fixed}"


@dataclass(frozen=True)
class Image:
    """What one image name asks for: sorted, de-duplicated attribute paths,
    and the platform its name pins (`arm64/...`), or None for every
    platform the registry serves (builders/service.py decides which)."""

    packages: tuple[str, ...]
    platform: Platform | None = None
    # the name as the client wrote it (`shell/hello`), for people; two names
    # that ask for the same packages are the same image
    asked: str = field(default="", compare=False)

    @classmethod
    def from_name(cls, name: str) -> "Image":
        """Parse a repository name that already passed the registry grammar;
        InvalidImage when it puts a meta-package after a package."""
        misplaced = misplaced_meta(name)
        if misplaced:
            raise InvalidImage(misplaced)
        components = name.split("/")
        packages = []
        pinned = None
        while components and components[0] in META_PACKAGES:
            meta = components.pop(0)
            if meta == "shell":
                # in the registry's lower case, as a user would type them, so
                # `shell` and `shell/bashinteractive` are one image and every
                # image's canonical name is a valid registry name
                packages.extend(p.lower() for p in SHELL_PACKAGES)
            else:
                pinned = platforms.PREFIXES[meta]
        packages.extend(components)
        return cls(tuple(sorted(set(packages))), pinned, asked=name)

    def on(self, platform: Platform) -> "Image":
        """The same packages for `platform`."""
        return replace(self, platform=platform)

    @property
    def system(self) -> str:
        return self._platform.system

    @property
    def arch(self) -> str:
        return self._platform.architecture

    @property
    def _platform(self) -> Platform:
        if self.platform is None:
            raise ValueError(f"{self.name} is not yet for one platform")
        return self.platform

    @property
    def attribute_paths(self) -> list[list[str]]:
        return [p.split(".") for p in self.packages]

    @property
    def name(self) -> str:
        return "/".join(self.packages)

    @property
    def label(self) -> str:
        """One string per distinct image (whatever order the name had)."""
        return f"{self.arch}:{self.name}"
