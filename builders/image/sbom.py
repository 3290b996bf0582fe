"""What is inside an image: a CycloneDX SBOM of its Nix closure.

Made when the image is built, from what Nix reported: one component per
store path of the closure (its name and version as Nix parses them from
the path, the path, the sha256 of its NAR, a purl and a CPE for scanners),
the dependencies from the paths' references, the requested packages
marked as such with the licences nixpkgs gives them (`meta.license`; for
paths Nix did not evaluate, nothing is claimed), and the package source
and pinned revision in the metadata.

Deterministic: the same image gives byte-identical SBOMs.  Its bom-refs
are store paths, its serial number is derived from the image's config
digest, and its timestamp is the image config's fixed creation time.
"""
from __future__ import annotations

import datetime
import re
import uuid

from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.dependency import Dependency
from cyclonedx.model.license import DisjunctiveLicense
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from cyclonedx.spdx import is_supported_id
from packageurl import PackageURL

from . import manifest

MEDIA_TYPE = "application/vnd.cyclonedx+json"
SCHEMA = SchemaVersion.V1_6
IMAGE_REF = "image"

# CPE 2.3 formatted strings: these stand as they are, other printable
# punctuation is escaped with a backslash.
_CPE_PLAIN = re.compile(r"[A-Za-z0-9._-]")
_CPE_ESCAPED = set("\\*?!\"#$%&'()+,/:;<=>@[]^`{|}~")


def parse_name(name: str) -> tuple[str, str]:
    """A store path's name as Nix splits it (`builtins.parseDrvName`): the
    version starts at the first `-` followed by a character that is not a
    letter (`glibc-2.37-8` is glibc 2.37-8, `bash-interactive-5.2` is
    bash-interactive 5.2)."""
    for i, c in enumerate(name[:-1]):
        if c == "-" and not name[i + 1].isalpha():
            return name[:i], name[i + 1:]
    return name, ""


def _cpe_part(text: str) -> str | None:
    out = []
    for c in text:
        if _CPE_PLAIN.fullmatch(c):
            out.append(c)
        elif c in _CPE_ESCAPED:
            out.append("\\" + c)
        else:
            return None
    return "".join(out)


def cpe(pname: str, version: str) -> str | None:
    """The CPE scanners match a Nix package on (vendor and product are its
    name, as sbomnix derives them), or None when there is no version."""
    product, ver = _cpe_part(pname.lower()), _cpe_part(version)
    if not (product and ver):
        return None
    return f"cpe:2.3:a:{product}:{product}:{ver}:*:*:*:*:*:*:*"


def _licenses(known: tuple[dict, ...]) -> list[DisjunctiveLicense]:
    """SPDX ids where nixpkgs has one CycloneDX knows, else the licence's name."""
    out = []
    for lic in known:
        spdx = lic.get("spdxId")
        if spdx and is_supported_id(spdx):
            out.append(DisjunctiveLicense(id=spdx))
        elif lic.get("fullName") or lic.get("shortName") or spdx:
            out.append(DisjunctiveLicense(name=lic.get("fullName") or lic.get("shortName") or spdx))
    return out


def make(*, image_name: str, platform, revision, source: str, closure, requested,
         seed: str, created: str = manifest.CREATED) -> bytes:
    """The SBOM of one image, as CycloneDX JSON.

    `closure` is the image's store paths (builders/nixbuild/closure.py StorePath),
    `requested` what Nix resolved the image's packages to (Resolved, with
    their outputs, descriptions and licences), `seed` the image's config
    digest, from which the serial number is derived, and `created` the
    config's creation time, its timestamp (so the SBOM is reproducible too).
    """
    wanted = {r.out: r for r in requested}
    components = []
    for path in closure:
        base = path.path.rsplit("/", 1)[-1].split("-", 1)[-1]
        pname, version = parse_name(base)
        props = [Property(name="nix:store_path", value=path.path),
                 Property(name="nix:nar_size", value=str(path.nar_size))]
        asked = wanted.get(path.path)
        if asked is not None:
            props += [Property(name="nix:requested", value="true"),
                      Property(name="nix:attribute_path", value=asked.attr_path)]
        components.append(Component(
            bom_ref=path.path, name=pname, version=version or None,
            type=ComponentType.APPLICATION if asked else ComponentType.LIBRARY,
            description=(asked.description or None) if asked else None,
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=path.nar_hash)]
            if path.nar_hash else None,
            licenses=_licenses(asked.licenses) if asked else None,
            purl=PackageURL(type="nix", name=pname, version=version or None),
            cpe=cpe(pname, version),
            properties=props))
    image = Component(
        bom_ref=IMAGE_REF, type=ComponentType.CONTAINER, name=image_name, version=revision.pin,
        description=f"Nix packages {', '.join(r.attr_path for r in requested)} "
                    f"for {platform.name}",
        properties=[Property(name="nix:system", value=platform.system)])
    bom = Bom(
        components=components,
        serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"nix-image-registry:{seed}"),
        metadata=BomMetaData(
            component=image,
            timestamp=datetime.datetime.strptime(created, "%Y-%m-%dT%H:%M:%S%z"),
            properties=[Property(name="nix:package_source", value=source),
                        Property(name="nix:revision", value=revision.identity),
                        Property(name="nix:revision_description", value=revision.description)]))
    by_path = {p.path: c for p, c in zip(closure, components)}
    bom.dependencies.add(Dependency(
        ref=image.bom_ref,
        dependencies=[Dependency(ref=by_path[p].bom_ref) for p in wanted if p in by_path]))
    for path in closure:
        bom.dependencies.add(Dependency(
            ref=by_path[path.path].bom_ref,
            dependencies=[Dependency(ref=by_path[r].bom_ref)
                          for r in path.references if r != path.path and r in by_path]))
    return JsonV1Dot6(bom).output_as_string(indent=None).encode()
