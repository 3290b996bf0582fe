"""The pages people read: what this registry is, builds and why they failed,
and package lookup.  Plain server-rendered HTML; every value is escaped by
the templates (logs and the Host header are untrusted)."""
from __future__ import annotations

import logging
import threading
import time

from flask import Blueprint, Response, current_app, render_template, request
from werkzeug.routing import PathConverter

from builders.errors import BuildError
from builders.image import manifest, platforms
from builders.nixbuild.nix import Deadline
from builders.image.sbom import MEDIA_TYPE as SBOM_MEDIA_TYPE
from storage import keys
from builders.image.names import META_PACKAGES, SHELL_PACKAGES, Image
from builders.words import close_matches

from . import grammar
from builders import digests

logger = logging.getLogger(__name__)

bp = Blueprint("web", __name__)

RECENT = 20
# Package lookups run Nix; people retype the same names, so answers are kept
# this long (in the app's "lookups" cache).
LOOKUP_SECONDS = 300


class Examples:
    """The package names the home page's commands use, from the package set
    served: the first of some well-known names that it has (the test set
    has few of nixpkgs' names, and an operator's own set may have none).
    Nix looks them up once per revision, in the background: a page waits
    for that `wait` seconds at most, and meanwhile names what was built."""

    CANDIDATES = ("git", "htop", "curl", "hello", "jq", "ripgrep", "python3")
    NESTED = ("python3Packages.flask", "python3Packages.requests", "nodePackages.prettier")

    # after a failed lookup (the source out of reach), pages do without for a while
    RETRY_SECONDS = 60

    def __init__(self, images, wait: float = 2.0, clock=time.monotonic):
        self.images = images
        self.wait = wait
        self._clock = clock
        self._lock = threading.Lock()
        self._found: tuple[str, dict] | None = None  # (revision identity, examples)
        self._looking: threading.Thread | None = None
        self._failed_at: float | None = None

    def get(self) -> dict | None:
        """{"shell": whether the shell meta-package's packages are all there,
        "names": up to two package names, "nested": a nested one or None},
        or None while they are not known."""
        known = self.images.revisions.known()
        with self._lock:
            found = self._found
            if found is not None and (known is None or found[0] == known.identity):
                return found[1]
            failed_lately = (self._failed_at is not None
                             and self._clock() - self._failed_at < self.RETRY_SECONDS)
            if self._looking is None and not failed_lately:
                self._looking = threading.Thread(target=self._look, name="examples",
                                                 daemon=True)
                self._looking.start()
            looking = self._looking
        if found is not None or looking is None:
            return found and found[1]  # those of the revision before, meanwhile
        looking.join(self.wait)
        with self._lock:
            return self._found[1] if self._found is not None else None

    def _look(self):
        try:
            images = self.images
            revision = images.revisions.resolve("latest")
            wanted = [*SHELL_PACKAGES, *self.CANDIDATES, *self.NESTED]
            resolved = images.nix.resolve(revision.nix, images.platforms[0].system,
                                          [name.split(".") for name in wanted],
                                          Deadline(images.nix_timeout))
            there = {r.requested for r in resolved if r.status == "ok"}
            found = {"shell": all(p in there for p in SHELL_PACKAGES),
                     "names": [n for n in self.CANDIDATES if n in there][:2],
                     "nested": next((n.lower() for n in self.NESTED if n in there), None)}
            with self._lock:
                self._found = (revision.identity, found)
        except Exception as e:  # the page names what was built instead
            logger.warning("cannot look up the home page's example packages: %s", e)
            with self._lock:
                self._failed_at = self._clock()
        finally:
            with self._lock:
                self._looking = None


def _example_image(examples, built) -> str | None:
    """An image name to show: the package set's examples, else the image
    built last; None when neither is known."""
    if examples is not None and examples["names"]:
        return "/".join((["shell"] if examples["shell"] else []) + examples["names"])
    if built:
        return built[0].image_name
    return None


def _secure() -> bool:
    """Whether the client reached this page over HTTPS (directly, or
    through a trusted proxy that says so in X-Forwarded-Proto)."""
    return request.scheme == "https"


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
    """Builds with the image name that shows each: as the client wrote it,
    and a platform other than the default one named by its prefix
    (arm64/hello) when the name did not pin it."""
    default = _images().platforms[0].architecture
    for b in builds:
        arch, canonical = b.image.split(":", 1)
        b.image_name = b.asked or canonical
        if arch != default and arch in platforms.PREFIXES \
                and b.image_name.split("/", 1)[0] not in platforms.PREFIXES:
            b.image_name = f"{arch}/{b.image_name}"
    return builds


@bp.route("/")
def index():
    images = _images()
    history = images.history
    recent = _with_name(history.recent(RECENT)) if history else []
    examples = current_app.extensions["examples"].get()
    return render_template(
        "index.html", host=request.host, secure=_secure(), shell=SHELL_PACKAGES,
        example=_example_image(examples, [b for b in recent if b.status == "built"]),
        nested=examples and examples["nested"],
        source=images.source.describe(), revision=images.revisions.known(),
        tags_select=images.source.tags_select_revision, tags_help=images.source.tags_help,
        strict_tags=images.revisions.strict,
        platforms=[p.name for p in images.platforms], recent=recent,
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
                               host=request.host, secure=_secure()), 400
    images = _images()
    try:
        image = images.pinned(Image.from_name(name))
    except BuildError as e:
        return render_template("build.html", name=name, tag=tag, packages=[], arch="",
                               status="failed", status_text=e.message, build=None,
                               record=None, log="", sharing={}, host=request.host,
                               secure=_secure()), 400
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
    subject = digests.digest_of(record.manifest(manifest.OCI_MANIFEST)) if record else None
    # what `docker pull` of this platform's image gets, and pulls again by digest
    digest = digests.digest_of(record.manifest(manifest.DOCKER_MANIFEST)) if record else None
    return render_template(
        "build.html", name=name, tag=tag, packages=image.packages, arch=image.arch,
        platform=image.platform.name, status=status, status_text=STATUS_TEXT[status],
        build=build, record=record, log=log, sharing=sharing, host=request.host,
        secure=_secure(), subject=subject, digest=digest), code


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
            try:
                result = current_app.extensions["lookups"](name)
            except BuildError as e:
                error = e.message
            if result is not None and result.status == "missing":
                matches = close_matches(name.split(".")[-1], result.siblings)
    return render_template("packages.html", name=name, result=result, error=error,
                           matches=matches, source=_images().source.describe(),
                           host=request.host), (400 if error and not result else 200)
