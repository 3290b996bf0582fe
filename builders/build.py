"""One image made: from its packages at a pinned revision to a stored record.

Nix resolves, builds and reports the closure; the closure is grouped into
layers and stored; the config and both manifest formats are written, with
the image's provenance in labels and annotations; then its SBOM, with one
artifact manifest per manifest format for the referrers API; and last the
record that serves the image.  Who builds, when, and what happens to
the outcome is builders/service.py's business.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from storage import keys
from .layers import forest, grouping
from .image import manifest, sbom
from .errors import (BuildFailed, DerivationsCollected, PackagesNotFound, PackagesRefused,
                     PlatformUnsupported)
from .image.names import Image
from .nixbuild.nix import Deadline
from .image.records import ImageRecord, IndexRecord
from .sources.source import Revision
from .words import close_matches
from . import digests

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Built:
    record: ImageRecord
    store_paths: int      # in the closure
    nix_seconds: float    # of the whole build's time
    roots: tuple = ()     # the requested packages' store paths (the closure's roots)
    phases: tuple = ()    # (phase, seconds) in the order they ran, for the "built" log line


class _Clock:
    """Tells `phase` each step, and times the steps: (name, seconds) each."""

    def __init__(self, phase):
        self._phase = phase
        self._name, self._since = None, time.monotonic()
        self.times: list[tuple[str, float]] = []

    def __call__(self, name=None):
        now = time.monotonic()
        if self._name is not None:
            self.times.append((self._name, now - self._since))
        self._name, self._since = name, now
        if name is not None:
            self._phase(name)


class ImageBuilder:
    def __init__(self, storage, *, nix, popularity, layerstore, nix_timeout: float,
                 max_layers: int):
        self.storage = storage
        self.nix = nix
        self.popularity = popularity
        self.layerstore = layerstore
        self.nix_timeout = nix_timeout
        self.max_layers = max_layers

    def build(self, image: Image, revision: Revision, key: str, job, phase,
              source: str = "") -> Built:
        """Make and store the image; `phase(name)` is told each step, and
        `job` the Nix log's path and the layers as they are stored.
        `source` describes the package source, for the SBOM."""
        started = time.monotonic()
        phase = _Clock(phase)
        deadline = Deadline(self.nix_timeout, log_path=job.log_path)
        # what Nix built stays rooted until its layers are stored
        with self.nix.roots() as gc_roots:
            resolved = self._realised(image, revision.nix, deadline, gc_roots, phase)
            roots = [r.out for r in resolved]
            closure = self.nix.closure(roots, deadline)
            nix_seconds = time.monotonic() - started

            phase("making layers")  # grouping the closure is part of it
            names = [p.name for p in closure]
            counts, popular = self.popularity.for_layering(names, image.system)
            groups = grouping.group(closure, self.max_layers - 1, counts, roots, threshold=popular)
            job.layers(len(groups) + 1)
            stored = self.layerstore.store_layers(
                groups, forest.symlink_tree(roots), on_layer=job.layer_done,
                sizes={p.path: p.nar_size for p in closure})
        self.popularity.record(names, image.system)

        phase("storing")
        labels = provenance(image, revision)
        created = manifest.created(revision.created if revision.created is not None else next(
            (r.source_date for r in resolved if r.source_date is not None), None))
        config_ref = self.layerstore.store_blob(
            self._config(image, resolved, stored, labels, created))
        manifests = {}
        for media_type in manifest.MANIFEST_TYPES:
            body = manifest.render(media_type, config_ref, stored, annotations=labels)
            self.layerstore.store_blob(body, media_type)
            manifests[media_type] = body.decode()
        bom = sbom.make(image_name=image.name, platform=image.platform, revision=revision,
                        source=source, closure=closure, requested=resolved,
                        seed=config_ref["digest"], created=created)
        record = ImageRecord(
            key=key, packages=list(image.packages), system=image.system,
            manifests=manifests, config=config_ref, layers=stored,
            closure_size=sum(p.nar_size for p in closure),
            sbom=self.store_sbom(bom, manifests), licenses=_licenses(resolved),
            revision=revision.identity)
        self.storage.put_bytes(keys.manifest(key), record.to_json(), "application/json")
        phase()
        return Built(record, len(closure), nix_seconds, tuple(roots), tuple(phase.times))

    def _realised(self, image: Image, source: dict, deadline, gc_roots, phase=lambda name: None):
        """The requested packages, evaluated and built (rooted in `gc_roots`).
        Nothing roots a derivation between its evaluation and its build: when
        a collection of the store deleted one meanwhile, evaluate again."""
        def attempt():
            phase("evaluating")
            resolved = self._resolve(image, source, deadline)
            phase("realising")
            self.nix.realise({f"{r.drv}!{r.output_name}": r.requested for r in resolved},
                             deadline, roots=gc_roots)
            return resolved
        try:
            return attempt()
        except DerivationsCollected as e:
            logger.info("%s: %s; evaluating again", image.name, e.message)
            return attempt()

    def _resolve(self, image: Image, source: dict, deadline):
        """Every requested attribute path, or the reasons some cannot be had:
        all missing names at once, with close matches, or why Nix refuses."""
        paths = image.attribute_paths
        resolved = self.nix.resolve(source, image.system, paths, deadline)
        missing = [r for r in resolved if r.status == "missing"]
        if missing:
            raise PackagesNotFound([
                (r.requested, close_matches(r.requested.split(".")[-1], r.siblings))
                for r in missing])
        unsupported = [r for r in resolved if r.status == "unsupported"]
        if unsupported:
            raise PlatformUnsupported("; ".join(
                f"{r.requested} is not available on {image.platform.name} ({image.system})"
                + (f": it is built for {', '.join(r.platforms[:6])}"
                   + (", ..." if len(r.platforms) > 6 else "") if r.platforms else "")
                for r in unsupported))
        refused = []
        logs = []
        for i, r in enumerate(resolved):
            if r.status == "notDerivation":
                refused.append(f"{r.requested} is not a package (it is not a derivation)")
            elif r.status == "error":
                why = self.nix.explain(source, image.system, paths, i, deadline)
                logs.append(why)
                reason = next((line[len("error: "):] for line in why.splitlines()
                               if line.startswith("error: ")), why.splitlines()[-1] if why else "")
                refused.append(f"{r.requested} cannot be built: {reason}")
        if refused:
            raise PackagesRefused("; ".join(refused), log_tail="\n".join(logs))
        return resolved

    def index(self, image: Image, key: str, members, left_out: dict[str, str],
              failed: dict[str, str] | None = None) -> IndexRecord:
        """Store the index of `image` in both formats, listing `members`
        ([(platform, its ImageRecord)]), and its record, unless some
        platforms `failed` (platform name -> why): that index is served
        while they fail, not kept."""
        manifests = {}
        for media_type in manifest.INDEX_TYPES:
            member_type = manifest.INDEX_MEMBERS[media_type]
            body = manifest.render_index(media_type, [
                (p.descriptor(), record.manifest(member_type)) for p, record in members])
            self.layerstore.store_blob(body, media_type)
            manifests[media_type] = body.decode()
        record = IndexRecord(key=key, packages=list(image.packages),
                             members={p.name: r.key for p, r in members}, left_out=left_out,
                             manifests=manifests, failed=dict(failed or {}))
        if not record.failed:
            self.storage.put_bytes(keys.manifest(key), record.to_json(), "application/json")
        return record

    def add_sbom(self, image: Image, revision: Revision, record: ImageRecord,
                 source: str = "") -> ImageRecord:
        """The record of an image built before SBOMs were made, with its SBOM
        made and stored now (its manifests and config stay as they are).
        Nix resolves the packages again at the record's revision; the SBOM
        is made only if that gives the store paths the image's layers hold."""
        deadline = Deadline(self.nix_timeout)
        with self.nix.roots() as gc_roots:
            resolved = self._realised(image, revision.nix, deadline, gc_roots)
            closure = self.nix.closure([r.out for r in resolved], deadline)
        held = set()
        for layer in record.layers:
            data = self.storage.read(keys.blob_source(layer["digest"]))
            held.update(json.loads(data).get("paths", ()) if data else ())
        if held != {p.path for p in closure}:
            raise BuildFailed(f"{image.name}: the package source no longer gives the store "
                              "paths this image holds; pull it again to build it anew")
        bom = sbom.make(image_name=image.name, platform=image.platform, revision=revision,
                        source=source, closure=closure, requested=resolved,
                        seed=record.config["digest"])
        record.sbom = self.store_sbom(bom, record.manifests)
        record.licenses = _licenses(resolved)
        self.storage.put_bytes(keys.manifest(record.key), record.to_json(), "application/json")
        return record

    def store_sbom(self, bom: bytes, manifests: dict[str, str]) -> dict:
        """Store the SBOM, and for each manifest an artifact manifest whose
        subject it is, listed under the manifest's referrers; {digest,
        size, referrers: {manifest digest: artifact descriptor}}."""
        blob = self.layerstore.store_blob(bom, sbom.MEDIA_TYPE)
        self.layerstore.store_constant(manifest.EMPTY, manifest.EMPTY_TYPE)
        referrers = {}
        for media_type, text in sorted(manifests.items()):
            body = text.encode()
            subject = {"mediaType": media_type, "digest": digests.digest_of(body),
                       "size": len(body)}
            artifact = manifest.render_artifact(
                sbom.MEDIA_TYPE, {"mediaType": sbom.MEDIA_TYPE, **blob}, subject,
                title="sbom.cdx.json")
            ref = self.layerstore.store_blob(artifact, manifest.OCI_MANIFEST)
            descriptor = {"mediaType": manifest.OCI_MANIFEST, **ref,
                          "artifactType": sbom.MEDIA_TYPE}
            self.storage.put_bytes(keys.referrers(subject["digest"]),
                                   digests.canonical({"manifests": [descriptor]}),
                                   "application/json")
            referrers[subject["digest"]] = descriptor
        return {**blob, "referrers": referrers}

    @staticmethod
    def _config(image, resolved, stored, labels, created) -> bytes:
        by_attr = {r.attr_path: r for r in resolved}
        env = []
        if "cacert" in by_attr:
            env.append(f"SSL_CERT_FILE={by_attr['cacert'].out}/etc/ssl/certs/ca-bundle.crt")
        cmd = ["bash"] if "bashInteractive" in by_attr else None
        return manifest.image_config(arch=image.arch, variant=image.platform.variant,
                                     diff_ids=[l["diff_id"] for l in stored], env=env, cmd=cmd,
                                     labels=labels, created_at=created)


def _licenses(resolved) -> dict[str, list[str]]:
    """Requested attribute path -> its licences (SPDX id, else name), for pages."""
    return {r.attr_path: [l.get("spdxId") or l.get("fullName") or l.get("shortName")
                          for l in r.licenses] for r in resolved}


def provenance(image: Image, revision: Revision) -> dict[str, str]:
    """The `org.opencontainers.image.*` labels and annotations of an image:
    where its package set comes from, at which revision, and what it holds;
    nothing that changes from one build of it to the next."""
    source = revision.nix.get("url") or f"file://{revision.nix.get('path', '')}"
    return {
        "org.opencontainers.image.title": image.name,
        "org.opencontainers.image.description":
            f"Nix packages {', '.join(image.packages)} for {image.platform.name}",
        "org.opencontainers.image.source": source,
        "org.opencontainers.image.revision": revision.pin,
    }
