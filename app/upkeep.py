"""Operators' commands that look after what storage holds: `gc`, and the
remembered build failures (`failures list`, `failures clear`)."""
from __future__ import annotations

import functools
import json
import sys
import time

import click
from flask import current_app
from flask.cli import ScriptInfo, with_appcontext

from builders.errors import BuildError
from builders.image.names import Image
from builders.jobs.failures import RECHECK_SECONDS
from builders.words import counted
from storage import keys

from . import grammar


class EnvironmentScriptInfo(ScriptInfo):
    """How `nix-image-registry` makes its app: from the environment, whose
    configuration a command can read before the app (and its storage) is made."""

    def config(self):
        from .config import Config
        return Config.from_env()


def with_chosen_storage(f):
    """with_appcontext, refusing first when no storage was chosen: a command
    that deletes must not fall back on the default ./var/storage of
    whatever folder it was started in."""
    @click.pass_context
    @functools.wraps(f)
    def decorator(ctx, *args, **kwargs):
        info = ctx.ensure_object(ScriptInfo)
        if current_app:
            config = current_app.config["REGISTRY"]
        elif isinstance(info, EnvironmentScriptInfo):
            config = info.config()
        else:
            ctx.with_resource(info.load_app().app_context())
            config = current_app.config["REGISTRY"]
        if not config.storage_chosen:
            raise click.ClickException(
                f"{ctx.info_name} deletes from storage, so it needs the storage named: set "
                "STORAGE_PATH (or NIXERY_STORAGE_BACKEND=gcs and GCS_BUCKET) as the registry "
                f"has it; without it the default would be {config.storage_path}")
        if not current_app:
            ctx.with_resource(info.load_app().app_context())
        return ctx.invoke(f, *args, **kwargs)
    return decorator


@click.command("gc")
@click.option("--dry-run", is_flag=True,
              help="Say what would be deleted, and how many bytes; delete nothing.")
@with_chosen_storage
def gc(dry_run):
    """Delete what storage no longer needs.

    Images not pulled (by tag or by digest) within NIXERY_RETENTION days,
    and the layers, configs, manifests and SBOMs that only they use; expired
    failure verdicts, build claims and source resolutions; this machine's
    build logs older than the retention.  Safe to run while instances serve
    and build: what is used meanwhile is kept.
    """
    from builders.image import records
    from builders.sources import revisions
    from storage import gc as collection, lifecycle

    config = current_app.config["REGISTRY"]
    images = current_app.extensions["images"]
    store = current_app.extensions["storage"]
    before = json.loads(store.read(keys.gc_state()) or b"{}")
    expected = sum(t["objects"] for t in before.get("stored", {}).values()) or 1
    with click.progressbar(length=expected, label="listing storage", file=sys.stderr) as bar:
        collector = collection.Collector(
            store, retention=config.retention, grace=lifecycle.grace_seconds(config.nix_timeout),
            failure_ttl=config.failure_ttl, history=images.history, held=records.held,
            prune_tags=functools.partial(revisions.prune_kept, store),
            on_listed=lambda info: bar.update(1))
        report = collector.run(dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    for info in sorted(report.doomed, key=lambda i: i.key):
        click.echo(f"{verb} {info.key} ({_mb(info.size)})")
    by_kind = report.judged() if dry_run else report.deleted
    total = lifecycle.total(by_kind.values())
    for kind, tally in sorted(by_kind.items()):
        click.echo(f"{kind}: {verb} {counted(tally.objects, 'object')}, {_mb(tally.bytes)}")
    click.echo(f"{verb} {counted(total.objects, 'object')}, {_mb(total.bytes)} in all"
               + (f"; {report.survived} kept, used while they were judged"
                  if report.survived else ""))
    if report.pruned_tags:
        click.echo(f"folder revisions no kept image was built from, no longer tags: {verb} "
                   + ", ".join(report.pruned_tags))
    if report.logs.objects:
        click.echo(f"build logs: {verb} {report.logs.objects}, {_mb(report.logs.bytes)}")


@click.group("failures")
def failures():
    """Remembered build failures: what answers pulls without running Nix.

    Every instance shares them through storage.  Clearing one makes the next
    pull of its image run Nix again, on every instance within seconds.
    """


@failures.command("list")
@click.option("--all", "show_all", is_flag=True,
              help="Also failures that no longer answer pulls: expired, or met under other "
                   "settings (NIX_TIMEOUT, platforms, Nix's).")
@with_appcontext
def list_failures(show_all):
    """The failures that answer pulls now: age, state, kind, image, key, reason."""
    from builders.jobs import failures as failures_

    now = time.time()
    remembered = [r for r in current_app.extensions["images"].failures.remembered()
                  if show_all or r.state == "in force"]
    if not remembered:
        click.echo("no remembered failures answer pulls" if not show_all
                   else "no remembered failures")
        return
    for r in remembered:
        kind, cause = failures_.kind(r.error)
        state = f"{r.state} {_age(r.until - now)} more" if r.state == "in force" else r.state
        click.echo(f"{_age(now - r.at)} ago  {state}  {kind} ({cause})  {r.image}  "
                   f"key {r.key.rpartition('/')[2][:12]}  {r.error.message}")


@failures.command("clear")
@click.argument("refs", nargs=-1, metavar="IMAGE...")
@click.option("--all", "clear_all", is_flag=True, help="Forget every remembered failure.")
@with_appcontext
def clear_failures(refs, clear_all):
    """Forget remembered failures, so the next pull of their images runs Nix.

    IMAGE is the image as pulled: shell/hello for every tag, shell/hello:latest
    for that tag, arm64/hello for that platform only.
    """
    if bool(refs) == clear_all:
        raise click.UsageError("name the images whose failures to forget, or --all")
    wanted = [_image_ref(ref) for ref in refs]
    store = current_app.extensions["images"].failures
    cleared = kept = 0
    for r in store.remembered():
        if not (clear_all or any(_failed_as(r, image, tag) for image, tag in wanted)):
            continue
        if store.forget(r):
            cleared += 1
            click.echo(f"cleared {r.image}: {r.error.message}")
        else:
            kept += 1
            click.echo(f"kept {r.image}: it failed again while it was being cleared")
    if not cleared and not kept:
        click.echo("no remembered failures of " + (", ".join(refs) if refs else "any image"))
        return
    click.echo(f"cleared {counted(cleared, 'failure')}; the next pull of each image "
               f"runs Nix again (on every instance within {RECHECK_SECONDS}s)")


def _image_ref(ref: str):
    """(Image, tag or None) of IMAGE as a client writes it."""
    name, sep, tag = ref.partition(":")
    if not grammar.valid_name(name) or (sep and not grammar.TAG_RE.fullmatch(tag)):
        raise click.UsageError(f"not an image as pulled: {ref!r} (e.g. shell/hello or "
                               "shell/hello:latest)")
    try:
        return Image.from_name(name), (tag if sep else None)
    except BuildError as e:
        raise click.UsageError(f"{ref}: {e.message}") from None


def _failed_as(remembered, image: Image, tag: str | None) -> bool:
    """Whether a remembered failure is of `image` (on its platform, when its
    name pins one), pulled as `tag` (any, when None)."""
    about = remembered.about
    return (about.get("image") == image.name
            and (image.platform is None or about.get("system") == image.platform.system)
            and (tag is None or about.get("tag") == tag))


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n} bytes"
