"""How a job builds its image: once per image on the machine (a lock file)
and across instances (a claim in storage), within the machine's build
slots, its failure remembered for every worker and instance, and the build
recorded in the history, the log and the metrics.

An image named for no platform, when the registry serves several, is an
index: its job starts one job per platform, and makes the index of those
that built.  `svc` is the image service (builders/service.py), whose parts
these use: its locks, claims, failures, history, builder and revisions.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import time

from .. import metrics
from ..errors import (BuildError, BuildInterrupted, BuildQueueFull, BuildTimeout, InvalidImage,
                      PackagesNotFound, PlatformUnsupported)
from ..image.records import ImageRecord, IndexRecord
from . import failures as failures_
from .jobs import WAITING_FOR_ANOTHER, Job

logger = logging.getLogger(__name__)

# Time beyond NIX_TIMEOUT a build may take to make and store its layers,
# and so how long a request waits for another process's build.
UPLOAD_MARGIN = 300
# How far apart the clocks of two instances may be, for failures one stores
# and another reads.
CLOCK_SKEW = 5
# How often a process waiting for another instance's build looks at storage.
CLAIM_POLL_MIN, CLAIM_POLL_MAX = 0.5, 5.0



class Found(Exception):
    """Another process stored the image meanwhile: the wait ends with it."""

    def __init__(self, record):
        super().__init__(record.key)
        self.record = record


def build_once(svc, image, tag, revision, key, job: Job) -> ImageRecord:
    """Build, unless another process is at it: then wait for its record,
    or its error.  On this machine a lock file says who builds; between
    instances, a claim in storage."""
    # the other side's clock stamps its failure: allow for some skew
    waiting_since = time.time() - CLOCK_SKEW
    with svc.locks.image(key, timeout=svc.nix_timeout + UPLOAD_MARGIN,
                          on_wait=lambda: job.set_phase(WAITING_FOR_ANOTHER)
                          ) as waited:
        if waited:
            _raise_outcome(svc, key, waiting_since)
        claim = svc.claims.acquire(key)
        if claim is None:
            job.set_phase(WAITING_FOR_ANOTHER)
            claim = _wait_for_claim(svc, key, waiting_since)
        try:
            with claim.kept():
                return _build_claimed(svc, image, tag, revision, key, job)
        finally:
            claim.release()

def _raise_outcome(svc, key, since):
    """End the wait for another process's build: raise _Found with the
    record it stored, or the failure it met since `since`."""
    record = svc.stored(key)
    if record is not None:
        raise Found(record)
    error = svc.failures.recall(key, since=since)
    if error is not None:
        logger.info("image %s failed in another process: %s", key[:12], error.message)
        raise error

def _wait_for_claim(svc, key, since):
    """Wait while another instance holds the image's claim: until its
    outcome is stored, or its lease ends and this process takes over."""
    delay = CLAIM_POLL_MIN
    while True:
        time.sleep(delay)
        delay = min(delay * 2, CLAIM_POLL_MAX)
        _raise_outcome(svc, key, since)
        claim = svc.claims.acquire(key)
        if claim is not None:
            # its holder may have stored the image just before letting go
            try:
                _raise_outcome(svc, key, since)
            except BaseException:
                claim.release()
                raise
            return claim

def _build_claimed(svc, image, tag, revision, key, job: Job) -> ImageRecord:
    """Build within the build slots, remembering how it failed."""
    try:
        with contextlib.ExitStack() as slot:
            with metrics.BUILDS_QUEUED.track_inprogress():
                slot.enter_context(svc.locks.slot(
                    on_wait=lambda: job.set_phase("waiting for a build slot"),
                    client=job.client))
            return _tracked_build(svc, image, tag, revision, key, job)
    except BuildQueueFull:
        raise  # not a failure of the image: the next request may get a slot
    except BuildError as e:
        kind, cause = failures_.kind(e)
        metrics.BUILD_FAILURES.labels(kind, cause).inc()
        if kind == "machine":
            logger.warning("the build of %s for %s was stopped by the machine (%s), which is "
                           "no verdict on the image: %s", image.name, image.system, cause,
                           e.message)
        svc.failures.remember(key, e, about={
            "image": image.name, "asked": image.asked or image.name, "tag": tag,
            "system": image.system, "revision": revision.description})
        raise

def _tracked_build(svc, image, tag, revision, key, job: Job) -> ImageRecord:
    """The builder's build, with its history entry, its log file, its log
    lines and its metrics."""
    build = (svc.history.start(image.label, tag, key, asked=image.asked or image.name)
             if svc.history else None)
    job.log_path = build and build.log_path

    def phase(name):
        job.set_phase(name)
        if build:
            svc.history.phase(build, name)
    started = time.monotonic()
    outcome = "failed"
    try:
        if not image.packages:
            raise InvalidImage("the image name lists no packages")
        metrics.MANIFEST_CACHE.labels("miss").inc()
        if job.reservation is not None:
            job.reservation.charge()  # it builds: it counts in its client's hour
        logger.info("building %s for %s from %s, %s", image.name, image.system,
                    svc.source.describe(), revision.description)
        with metrics.BUILDS_IN_FLIGHT.track_inprogress():
            try:
                built = svc.builder.build(image, revision, key, job, phase,
                                           source=svc.source.describe())
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                # making the layers filled this machine's disk
                raise BuildInterrupted(
                    f"the build machine has no disk space left ({e.strerror}); not a "
                    "fault of the image: pull again in a moment, once its operator has "
                    "freed some", cause="disk") from e
        record = built.record
        # seconds per phase, to see where a build's time beyond Nix goes
        logger.info("built %s: %d store paths in %d layers, Nix %.2fs, total %.2fs (%s)",
                    image.name, built.store_paths, len(record.layers), built.nix_seconds,
                    time.monotonic() - started,
                    ", ".join(f"{name} {seconds:.2f}s" for name, seconds in built.phases))
        outcome = "built"
        if svc.nix_cache is not None:
            # once the pulls waiting for it have the image
            job.after(lambda: svc.nix_cache.copy(built.roots, log_path=job.log_path))
        try:
            svc.revisions.built(revision)
        except Exception as e:  # the image is stored: only its revision's tag is missed
            logger.warning("could not keep %s as a tag: %s", revision.description, e)
        if build:
            svc.history.built(build, closure_size=record.closure_size, key=key,
                               layers=[{k: l[k] for k in ("digest", "size", "paths")}
                                       for l in record.layers])
        return record
    except BuildError as e:
        outcome = {BuildTimeout: "timeout", PackagesNotFound: "not_found",
                   BuildInterrupted: "interrupted"}.get(type(e), "failed")
        if build:
            svc.history.failed(build, status=outcome if outcome in (
                "timeout", "interrupted") else "failed", code=type(e).__name__,
                message=e.message)
        raise
    except Exception as e:
        if build:
            svc.history.failed(build, status="failed", code=type(e).__name__,
                                message=f"the registry failed while building: {e}")
        raise
    finally:
        metrics.BUILDS.labels(outcome).inc()
        metrics.BUILD_SECONDS.labels(outcome).observe(time.monotonic() - started)


def make_index(svc, image, tag, revision, key, job: Job) -> IndexRecord:
    """The index of `image` on every platform, made from each platform's
    image, whose jobs run side by side.  A platform its packages are not
    available on is left out.  One that fails does not fail the others'
    pulls: the index of the platforms that built is served, and not
    stored (its record lists them as failed), so that a later pull
    tries the failed one again; only when none built does the pull
    fail, naming the platform (a failure of the machine's first: it is
    retried)."""
    parts = {}
    for platform in svc.platforms:
        try:
            parts[platform] = svc.start_at(image.on(platform), tag, revision, job.client)
        except BuildError as e:  # remembered: it is known already
            parts[platform] = e
    job.watch({p.name: part for p, part in parts.items() if isinstance(part, Job)})
    members, left_out, failed = [], {}, {}
    for platform, part in parts.items():
        if isinstance(part, Job):
            part.wait(None)  # every job ends, within NIX_TIMEOUT and its uploads
            try:
                part = part.outcome()
            except BuildError as e:
                part = e
        if isinstance(part, PlatformUnsupported):
            left_out[platform.name] = part.message
        elif isinstance(part, BuildError):
            failed[platform.name] = _on_platform(part, platform)
        else:
            members.append((platform, part))
    if not members:
        if failed:
            raise next((e for e in failed.values() if isinstance(e, BuildInterrupted)),
                       next(iter(failed.values())))
        raise PlatformUnsupported(
            f"{image.name} is available on none of this registry's platforms: "
            + "; ".join(left_out.values()))
    record = svc.builder.index(image, key, members, left_out,
                                {name: e.message for name, e in failed.items()})
    if left_out:
        logger.info("index of %s leaves out %s", image.name, ", ".join(left_out))
    if failed:
        logger.warning("index of %s is served without %s, which failed to build: %s",
                       image.name, ", ".join(failed),
                       "; ".join(e.message for e in failed.values()))
    return record


def _on_platform(error: BuildError, platform) -> BuildError:
    """A platform's build error, for a pull of the index: the same error,
    its message naming the platform."""
    data = error.to_dict()
    data["attrs"]["message"] = f"{platform.name} ({platform.system}): {error.message}"
    return BuildError.from_dict(data)
