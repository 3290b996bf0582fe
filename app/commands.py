"""Operators' commands that build, in the Flask CLI: `flask --app app
prebuild ...`, `sbom`; those that look after storage are app/upkeep.py's."""
from __future__ import annotations

import time

import click
from flask import current_app
from flask.cli import with_appcontext

from builders.errors import BuildError
from builders.image.names import Image
from builders.jobs.jobs import Job

from . import grammar

# How often the progress bar looks at the jobs.
POLL_SECONDS = 0.5


def _image_names(names, names_file, tag) -> list[str]:
    """The image names of the arguments and the file, checked, once each."""
    names = list(names)
    if names_file is not None:
        names += [line.split("#", 1)[0].strip() for line in names_file]
    names = [n for n in dict.fromkeys(names) if n]
    if not names:
        raise click.UsageError("name at least one image, or a file of them with --file")
    bad = [n for n in names if not grammar.valid_name(n)]
    if bad or not grammar.TAG_RE.fullmatch(tag):
        raise click.UsageError("not an image name: " + ", ".join(bad) if bad
                               else f"not a tag: {tag!r}")
    return names


_NAMES_FILE = click.option("--file", "-f", "names_file", type=click.File(),
                           help="Image names, one per line (# starts a comment).")


@click.command("prebuild")
@click.argument("names", nargs=-1)
@_NAMES_FILE
@click.option("--tag", default="latest", show_default=True, help="The tag to build them at.")
@with_appcontext
def prebuild(names, names_file, tag):
    """Build images before anyone pulls them, e.g. after a channel moved.

    NAMES are image names as pulled: shell/git, htop, arm64/hello, ...
    Exits 1 when any of them cannot be built.
    """
    names = _image_names(names, names_file, tag)
    images = current_app.extensions["images"]
    outcomes: dict[str, str] = {}
    jobs: dict[str, Job] = {}
    for name in names:
        try:
            started = images.start(Image.from_name(name), tag)
        except BuildError as e:
            outcomes[name] = f"failed: {e.message}"
            continue
        if isinstance(started, Job):
            jobs[name] = started
        else:
            outcomes[name] = _failed_platforms(started) or "already built"

    def current(_):
        running = [f"{n} ({job.progress()})" for n, job in jobs.items() if n not in outcomes]
        return running[0] if running else ""

    with click.progressbar(length=len(names), label="prebuilding", item_show_func=current,
                           show_pos=True) as bar:
        bar.update(len(outcomes))
        while len(outcomes) < len(names):
            for name, job in jobs.items():
                if name in outcomes or not job.done:
                    continue
                try:
                    outcomes[name] = (_failed_platforms(job.outcome())
                                      or f"built in {job.seconds:.0f}s")
                except Exception as e:  # storage trouble too: say it, go on with the rest
                    outcomes[name] = f"failed: {getattr(e, 'message', e)}"
                bar.update(1)
            bar.render_progress()
            if len(outcomes) < len(names):
                time.sleep(POLL_SECONDS)
    failed = 0
    for name in names:
        click.echo(f"{name}:{tag}: {outcomes[name]}")
        failed += outcomes[name].startswith("failed")
    if failed:
        raise SystemExit(1)


def _failed_platforms(record) -> str | None:
    """`failed: ...` for an index some of whose platforms failed to build."""
    failed = getattr(record, "failed", None)
    return "failed: " + "; ".join(failed.values()) if failed else None


@click.command("sbom")
@click.argument("names", nargs=-1)
@_NAMES_FILE
@click.option("--tag", default="latest", show_default=True,
              help="The tag the images were pulled by.")
@with_appcontext
def sbom(names, names_file, tag):
    """Make the SBOMs of images built before the registry made them.

    Their records, manifests and digests stay as they are; Nix resolves
    their packages again at the same revision, and the SBOM is stored and
    listed in the referrers API.  Images not built yet are left alone.
    Exits 1 when any of them failed.
    """
    images = current_app.extensions["images"]
    failed = 0
    for name in _image_names(names, names_file, tag):
        try:
            outcomes = images.add_sboms(Image.from_name(name), tag)
        except Exception as e:  # say it, go on with the rest
            click.echo(f"{name}:{tag}: failed: {getattr(e, 'message', e)}")
            failed += 1
            continue
        for platform, outcome in outcomes.items():
            click.echo(f"{name}:{tag} ({platform}): {outcome}")
    if failed:
        raise SystemExit(1)
