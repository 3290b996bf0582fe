"""One image made: from its packages at a pinned revision to a stored record.

Nix resolves, builds and reports the closure; the closure is grouped into
layers and stored; the config and both manifest formats are written, and
the record that serves the image.  Who builds, when, and what happens to
the outcome is builders/service.py's business.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from storage import keys
from . import forest, layers, manifest
from .errors import PackagesNotFound, PackagesRefused, PlatformUnsupported
from .image import Image
from .nix import Deadline
from .records import ImageRecord
from .sources import Revision
from .suggest import close_matches


@dataclass(frozen=True)
class Built:
    record: ImageRecord
    store_paths: int      # in the closure
    nix_seconds: float    # of the whole build's time


class ImageBuilder:
    def __init__(self, storage, *, nix, popularity, layerstore, nix_timeout: float,
                 max_layers: int):
        self.storage = storage
        self.nix = nix
        self.popularity = popularity
        self.layerstore = layerstore
        self.nix_timeout = nix_timeout
        self.max_layers = max_layers

    def build(self, image: Image, revision: Revision, key: str, job, phase) -> Built:
        """Make and store the image; `phase(name)` is told each step, and
        `job` the Nix log's path and the layers as they are stored."""
        started = time.monotonic()
        deadline = Deadline(self.nix_timeout, log_path=job.log_path)
        phase("evaluating")
        resolved = self._resolve(image, revision.nix, deadline)
        phase("realising")
        self.nix.realise({f"{r.drv}!{r.output_name}": r.requested for r in resolved}, deadline)
        roots = [r.out for r in resolved]
        closure = self.nix.closure(roots, deadline)
        nix_seconds = time.monotonic() - started

        names = [p.name for p in closure]
        counts, popular = self.popularity.for_layering(names, image.system)
        groups = layers.group(closure, self.max_layers - 1, counts, roots, threshold=popular)
        phase("making layers")
        job.layers(len(groups) + 1)
        stored = self.layerstore.store_layers(groups, forest.symlink_tree(roots),
                                              on_layer=job.layer_done)
        self.popularity.record(names, image.system)

        phase("storing")
        config_ref = self.layerstore.store_blob(self._config(image, resolved, stored))
        manifests = {}
        for media_type in manifest.MANIFEST_TYPES:
            body = manifest.render(media_type, config_ref, stored)
            self.layerstore.store_blob(body, media_type)
            manifests[media_type] = body.decode()
        record = ImageRecord(
            key=key, packages=list(image.packages), system=image.system,
            manifests=manifests, config=config_ref, layers=stored,
            closure_size=sum(p.nar_size for p in closure))
        self.storage.put_bytes(keys.manifest(key), record.to_json(), "application/json")
        return Built(record, len(closure), nix_seconds)

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

    @staticmethod
    def _config(image, resolved, stored) -> bytes:
        by_attr = {r.attr_path: r for r in resolved}
        env = []
        if "cacert" in by_attr:
            env.append(f"SSL_CERT_FILE={by_attr['cacert'].out}/etc/ssl/certs/ca-bundle.crt")
        cmd = ["bash"] if "bashInteractive" in by_attr else None
        return manifest.image_config(arch=image.arch, variant=image.platform.variant,
                                     diff_ids=[l["diff_id"] for l in stored], env=env, cmd=cmd)
