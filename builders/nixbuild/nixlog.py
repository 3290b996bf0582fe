"""What Nix's words say: which failure a command's log tells of.

The image's own (a package that fails to build, an evaluation error), the
package source's (a commit or a download that is not there), or trouble of
the machine's, which says nothing of the image (a signal, a full disk, a
Nix daemon or remote builder out of reach, no builder for the platform).
"""
from __future__ import annotations

import os
import re
import signal

from ..errors import (BuildError, BuildFailed, BuildInterrupted, BuildTimeout,
                      DerivationsCollected, PackageUnbuildable, RevisionNotFound,
                      SourceUnavailable)

_MISSING_REV_RE = re.compile(r"Cannot find Git revision '([0-9a-f]{40})'")
_DOWNLOAD_RE = re.compile(r"unable to download '([^']+)': (.*)")
_GIT_RE = re.compile(r"(?:fetching Git repository|program 'git' failed|fatal: ).*")
_NIX_TIMEOUT_RE = re.compile(r"building of '[^']+' .*timed out after \d+ seconds")
_BUILDER_RE = re.compile(r"builder for '(/nix/store/[^']+\.drv)' failed(?: with exit code (\d+))?")
_WRONG_SYSTEM_RE = re.compile(r"a '([^']+)' with features \{[^}]*\} is required to build "
                              r"'[^']+', but I am a '([^']+)'")
# Trouble of the machine's, not of the image (see machine_trouble)
_SIGNAL_RE = re.compile(r"builder for '(/nix/store/[^']+\.drv)' failed due to signal (\d+)")
_NO_SPACE_RE = re.compile(r"No space left on device|Disk quota exceeded")
_DAEMON_RE = re.compile(r"cannot connect to socket at '([^']+)': ([^\n]*)")
_REMOTE_RE = re.compile(r"cannot build on '([^']+)': (?:error: )?([^\n]*)")
# a derivation deleted after nix-instantiate wrote it (locally; through the daemon)
_GONE_RE = re.compile(r"cannot build missing derivation '([^']+\.drv)'"
                      r"|path '([^']+\.drv)' is not valid")
_NOISE = ("(use '--show-trace'", "warning: you did not specify '--add-root'")


def clean_log(text: str) -> str:
    lines = [line for line in text.splitlines() if not line.startswith(_NOISE)]
    return "\n".join(lines).strip()


def realise_error(log: str, outputs: dict[str, str], limit: float) -> BuildError:
    """Why `nix-store --realise` of `outputs` (drv!output -> the requested
    name) failed, from its log: the package that failed to build, a
    collection that deleted derivations, the time limit, or the source."""
    m = _GONE_RE.search(log)
    if m:
        return DerivationsCollected(
            f"the Nix store was collected while the image was built ({m.group(1) or m.group(2)} "
            "was deleted); pull it again", log_tail=log)
    if _NIX_TIMEOUT_RE.search(log):
        return BuildTimeout(limit, log_tail=log)
    m = _BUILDER_RE.search(log)
    if m:
        drv = m.group(1)
        owner = next((name for key, name in outputs.items() if key.split("!")[0] == drv), None)
        what = os.path.basename(drv)[33:-4]
        code = f" with exit code {m.group(2)}" if m.group(2) else ""
        if owner:
            message = f"package {owner} failed to build ({what}{code})"
        else:
            message = f"a dependency ({what}) of {', '.join(sorted(set(outputs.values())))} failed to build{code}"
        return BuildFailed(message, log_tail=log)
    m = _DOWNLOAD_RE.search(log)
    if m:
        return SourceUnavailable(f"could not download {m.group(1)}: {m.group(2)}", log_tail=log)
    return BuildFailed("Nix failed to build " + ", ".join(sorted(set(outputs.values()))),
                      log_tail=log)


def machine_trouble(log: str, returncode: int, program: str) -> BuildInterrupted | None:
    """What stopped a Nix command, when it was the machine and not the
    image: Nix's log names it, or Nix itself died of a signal (`timeout`,
    which runs it, then exits with 128 plus the signal, or of the signal)."""
    if _NIX_TIMEOUT_RE.search(log):
        return None  # the build's own time ran out: BuildTimeout
    retry = "not a fault of the image: pull again in a moment"
    m = _DAEMON_RE.search(log)
    if m:
        return BuildInterrupted(f"the Nix daemon cannot be reached ({m.group(1)}: "
                                f"{m.group(2)}); {retry}", cause="nix-daemon", log_tail=log)
    m = _NO_SPACE_RE.search(log)
    if m:
        return BuildInterrupted(f"the build machine has no disk space left ({m.group(0)}); "
                                f"{retry}, once its operator has freed some", cause="disk",
                                log_tail=log)
    m = _WRONG_SYSTEM_RE.search(log)
    remote = _REMOTE_RE.search(log)
    if remote and (m or not _BUILDER_RE.search(log)):
        # no builder ran and failed (which would be the image's fault): the
        # builders Nix was sent to did not answer, e.g. with max-jobs = 0
        platform = f" for {m.group(1)}" if m else ""
        return BuildInterrupted(
            f"Nix's remote builder {remote.group(1)}{platform} cannot be reached "
            f"({remote.group(2)}); {retry}", cause="remote-builder", log_tail=log)
    if m:
        return BuildInterrupted(
            f"this registry's Nix cannot build for {m.group(1)} (it is {m.group(2)}): its "
            f"operator must give Nix a binary cache or a builder for {m.group(1)}",
            cause="no-builder", log_tail=log)
    m = _SIGNAL_RE.search(log)
    if m:
        what = os.path.basename(m.group(1))[33:-4]
        return BuildInterrupted(
            f"the build of {what} was killed by {_signal_name(int(m.group(2)))}, which "
            f"came from the machine (its out-of-memory killer, say); {retry}",
            cause="signal", log_tail=log)
    if returncode < 0 or 128 < returncode < 128 + 65:
        number = -returncode if returncode < 0 else returncode - 128
        return BuildInterrupted(f"{program} was killed by {_signal_name(number)}; {retry}",
                                cause="signal", log_tail=log)
    return None


def _signal_name(number: int) -> str:
    """`signal 9 (Killed)`, as Nix says it."""
    try:
        name = signal.strsignal(number)
    except ValueError:
        name = None
    return f"signal {number} ({name})" if name else f"signal {number}"


def source_or_eval_error(stderr_tail):
    """Why evaluating the packages failed: the source, or the packages."""
    log = clean_log(stderr_tail)
    m = _MISSING_REV_RE.search(log)
    if m:
        return RevisionNotFound(f"commit {m.group(1)} is not in the package repository",
                                log_tail=log)
    m = _DOWNLOAD_RE.search(log)
    if m:
        return SourceUnavailable(
            f"could not fetch the package source {m.group(1)}: {m.group(2)}", log_tail=log)
    m = _GIT_RE.search(log)
    if m and "git" in log:
        return SourceUnavailable(f"could not fetch the package source: {m.group(0)}", log_tail=log)
    last = log.splitlines()[-1] if log else "no output"
    return PackageUnbuildable(f"evaluating the package source failed: {last}", log_tail=log)
