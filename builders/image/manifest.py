"""Image configs and manifests, Docker schema 2 and OCI, as canonical JSON."""
from __future__ import annotations

import json
import time

from ..digests import canonical, digest_of

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"

DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

# The config of an artifact that has none (OCI image spec 1.1).
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY = b"{}"

MANIFEST_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEX_TYPES = (DOCKER_LIST, OCI_INDEX)
# the manifests an index of each kind lists
INDEX_MEMBERS = {DOCKER_LIST: DOCKER_MANIFEST, OCI_INDEX: OCI_MANIFEST}
# config, gzipped layer, plain tar layer
_FORMATS = {
    DOCKER_MANIFEST: (DOCKER_CONFIG, DOCKER_LAYER, DOCKER_LAYER_TAR),
    OCI_MANIFEST: (OCI_CONFIG, OCI_LAYER, OCI_LAYER_TAR),
}

# An image's creation time is its package source's revision's date, where
# the source has one (a git commit's time, a channel's release), so the same
# image always has the same config digest.  Where it has none (a folder, a
# bare nixpkgs commit), this: the time Nix gives every file in its store.
CREATED = "1970-01-01T00:00:01Z"


def created(timestamp: float | None) -> str:
    """An image config's `created`: the revision's date, or CREATED."""
    if timestamp is None:
        return CREATED
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(timestamp)))
PATH = "/bin:/sbin:/usr/bin:/usr/sbin"


def image_config(*, arch, diff_ids, env=(), cmd=None, variant=None, labels=None,
                 created_at: str = CREATED) -> bytes:
    config = {"Env": [f"PATH={PATH}", *env]}
    if cmd:
        config["Cmd"] = list(cmd)
    if labels:
        config["Labels"] = dict(labels)
    doc = {
        "architecture": arch,
        "os": "linux",
        "created": created_at,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
    }
    if variant:
        doc["variant"] = variant
    return canonical(doc)


def render(media_type, config: dict, layers: list[dict], annotations=None) -> bytes:
    """The manifest of `media_type` for a config {digest, size} and layers
    [{digest, size}, ...] (with `uncompressed` true for a plain tar layer);
    the same inputs always give the same bytes.  `annotations` go into the
    OCI manifest (Docker's format has none)."""
    config_type, gzip_type, tar_type = _FORMATS[media_type]
    doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_type, "digest": config["digest"], "size": config["size"]},
        "layers": [{"mediaType": tar_type if l.get("uncompressed") else gzip_type,
                    "digest": l["digest"], "size": l["size"]} for l in layers],
    }
    if annotations and media_type == OCI_MANIFEST:
        doc["annotations"] = dict(annotations)
    return canonical(doc)


def empty_descriptor() -> dict:
    return {"mediaType": EMPTY_TYPE, "digest": digest_of(EMPTY), "size": len(EMPTY)}


def render_artifact(artifact_type: str, blob: dict, subject: dict, title: str) -> bytes:
    """An OCI artifact manifest (OCI image spec 1.1): one blob {mediaType,
    digest, size} of `artifact_type`, the empty config, and `subject` the
    descriptor of the manifest it is about; `title` names the blob's file
    for clients that save it."""
    return canonical({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": empty_descriptor(),
        "layers": [{**blob, "annotations": {"org.opencontainers.image.title": title}}],
        "subject": subject,
    })


def render_referrers(descriptors: list[dict]) -> bytes:
    """The OCI image index the referrers API answers."""
    return canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors})


def render_index(media_type, members: list[tuple[dict, bytes]]) -> bytes:
    """An OCI image index or a Docker manifest list of `members`, each
    (platform descriptor, manifest bytes of the kind the index lists)."""
    member_type = INDEX_MEMBERS[media_type]
    return canonical({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [{"mediaType": member_type, "digest": digest_of(body), "size": len(body),
                       "platform": platform} for platform, body in members],
    })


def media_type_of(data: bytes) -> str | None:
    """The mediaType a stored manifest or index declares, or None if it is
    not one of ours."""
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    if (isinstance(doc, dict) and doc.get("schemaVersion") == 2
            and doc.get("mediaType") in MANIFEST_TYPES + INDEX_TYPES):
        return doc["mediaType"]
    return None
