"""The pages people read: what this registry is, builds and why they failed,
and package lookup.  Plain server-rendered HTML; every value is escaped by
the templates (logs and the Host header are untrusted)."""
from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, render_template, request
from werkzeug.routing import PathConverter

from builders.errors import BuildError
from builders import manifest, platforms
from builders.sbom import MEDIA_TYPE as SBOM_MEDIA_TYPE
from storage import keys
from builders.image import META_PACKAGES, SHELL_PACKAGES, Image
from builders.suggest import close_matches

from . import grammar

bp = Blueprint("web", __name__)

RECENT = 20
# Package lookups run Nix; people retype the same names, so answers are kept
# this long (in the app's "lookups" cache).
LOOKUP_SECONDS = 300


class AnyPathConverter(PathConverter):
    """Like `path`, but also matching control characters, so the page's own
    checks (not a routing 404) answer them."""
    regex = r"[\s\S]*?"
    part_isolating = False  # spans '/'


@bp.app_template_filter("when")
def _when(ts):
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "-"


@bp.app_template_filter("size")
def _size(n):
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _images():
    return current_app.extensions["images"]


def _with_name(builds):
    """Builds with the image name that shows each: a platform other than
    the default one is named by its prefix (arm64/hello)."""
    default = _images().platforms[0].architecture
    for b in builds:
        arch, b.image_name = b.image.split(":", 1)
        if arch != default and arch in platforms.PREFIXES:
            b.image_name = f"{arch}/{b.image_name}"
    return builds


@bp.route("/")
def index():
    images = _images()
    history = images.history
    return render_template(
        "index.html", host=request.host, shell=SHELL_PACKAGES,
        source=images.source.describe(), revision=images.revisions.known(),
        tags_select=images.source.tags_select_revision, tags_help=images.source.tags_help,
        strict_tags=images.revisions.strict,
        platforms=[p.name for p in images.platforms],
        recent=_with_name(history.recent(RECENT)) if history else [],
        failures=_with_name(history.recent(RECENT // 2, failed=True)) if history else [])


STATUS_TEXT = {"building": "building", "built": "built", "cached": "cached",
               "failed": "failed", "timeout": "timed out",
               "interrupted": "stopped by the machine, not by the image: pull again",
               "not built": "not built yet"}


def _name_and_tag(ref):
    """`name:tag` (or just `name`, meaning latest) as the pages' addresses hold it."""
    name, _, tag = ref.rpartition(":")
    return (name, tag) if name else (tag, "latest")


@bp.route("/builds/<anypath:ref>")
def build(ref):
    name, tag = _name_and_tag(ref)
    if not (grammar.NAME_RE.fullmatch(name) and grammar.TAG_RE.fullmatch(tag)):
        return render_template("build.html", name=name, tag=tag, packages=[], arch="",
                               status="failed", status_text="not a valid image name",
                               build=None, record=None, log="", sharing={},
                               host=request.host), 400
    images = _images()
    try:
        image = images.pinned(Image.from_name(name))
    except BuildError as e:
        return render_template("build.html", name=name, tag=tag, packages=[], arch="",
                               status="failed", status_text=e.message, build=None,
                               record=None, log="", sharing={}, host=request.host), 400
    history = images.history
    build = history.latest(image.label, tag) if history else None
    record = None
    if build is None or build.status == "built":
        try:
            record = images.cached(image, tag)
        except BuildError:
            record = None  # the source cannot be resolved now; show what history knows
    if build is not None and build.status != "built":
        status = build.status
    elif record is not None:
        status = "built" if build else "cached"
    else:
        status = "not built"
    log = history.log_tail(build) if build is not None and status != "built" else ""
    sharing = history.sharing([l["digest"] for l in record.layers]) if record and history else {}
    code = 404 if status == "not built" else 200
    subject = manifest.digest_of(record.manifest(manifest.OCI_MANIFEST)) if record else None
    return render_template(
        "build.html", name=name, tag=tag, packages=image.packages, arch=image.arch,
        status=status, status_text=STATUS_TEXT[status], build=build, record=record,
        log=log, sharing=sharing, host=request.host, subject=subject), code


@bp.route("/sbom/<anypath:ref>")
def sbom(ref):
    """The SBOM of a built image, by its name and tag, to read or save."""
    name, tag = _name_and_tag(ref)
    record = None
    if grammar.NAME_RE.fullmatch(name) and grammar.TAG_RE.fullmatch(tag):
        images = _images()
        try:
            record = images.cached(images.pinned(Image.from_name(name)), tag)
        except BuildError:
            record = None
    body = (current_app.extensions["storage"].read(keys.blob(record.sbom["digest"]))
            if record is not None and record.sbom else None)
    if body is None:
        return Response(f"no SBOM of {name}:{tag} here: pull the image first\n", 404,
                        mimetype="text/plain")
    return Response(body, mimetype=SBOM_MEDIA_TYPE, headers={
        "Content-Disposition": "inline; filename=sbom.cdx.json"})


@bp.route("/packages")
def packages():
    name = request.args.get("name", "").strip()
    result = error = None
    matches = []
    if name:
        if not all(grammar.NAME_RE.fullmatch(part) for part in name.split(".")) or len(name) > 200:
            error = f"{name!r} is not a package name a registry path can hold"
        elif name in META_PACKAGES:
            error = (f"{name} is a meta-package, not a package: put it first in an image "
                     f"name, e.g. {name}/hello")
        else:
            lookups = current_app.extensions["lookups"]
            result = lookups.get(name)
            if result is None:
                try:
                    result = _images().lookup(name)
                except BuildError as e:
                    error = e.message
                else:
                    lookups[name] = result
            if result is not None and result.status == "missing":
                matches = close_matches(name.split(".")[-1], result.siblings)
    return render_template("packages.html", name=name, result=result, error=error,
                           matches=matches, source=_images().source.describe(),
                           host=request.host), (400 if error and not result else 200)
