"""Runs Nix: resolve packages, build them, report their runtime closure.

Every Nix command of one image shares one `Deadline`, so NIX_TIMEOUT bounds
evaluation and building together however many commands it takes.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

from .. import process
from ..errors import BuildFailed, BuildInterrupted, BuildTimeout
from . import nixlog
from .closure import StorePath, parse_path_info
from .nixlog import clean_log

logger = logging.getLogger(__name__)


def _expressions() -> str:
    """The folder of the Nix expressions: package data of an installed
    registry (setup.py puts nix/ there as builders/nixexpr), or nix/ beside
    a checkout's builders/."""
    builders = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    installed = os.path.join(builders, "nixexpr")
    if os.path.isfile(os.path.join(installed, "image.nix")):
        return installed
    return os.path.join(os.path.dirname(builders), "nix")


NIX_DIR = _expressions()
IMAGE_NIX = os.path.join(NIX_DIR, "image.nix")

# Without these, an unreachable source costs minutes of retries before Nix
# says it cannot download it.
FETCH_OPTIONS = ("--option", "connect-timeout", "10", "--option", "download-attempts", "2")

KILL_GRACE = 5

@dataclass(frozen=True)
class Resolved:
    """One requested attribute path as nix/image.nix reported it."""

    requested: str
    status: str  # ok | missing | error | notDerivation | unsupported
    attr_path: str
    drv: str | None = None
    out: str | None = None
    output_name: str = "out"
    siblings: tuple[str, ...] = ()
    name: str = ""
    version: str = ""
    description: str = ""
    platforms: tuple[str, ...] = ()  # the systems it is limited to, when unsupported
    # meta.license: each a dict of spdxId, shortName, fullName (those known)
    licenses: tuple[dict, ...] = ()
    # when the package source's revision was made, where Nix knows (git)
    source_date: int | None = None


class Deadline:
    """The time left of one image's Nix budget, and where its Nix log goes."""

    def __init__(self, limit: float, clock=time.monotonic, log_path=None):
        self.limit = limit
        self.log_path = log_path
        self._clock = clock
        self._end = clock() + limit

    def remaining(self) -> float:
        left = self._end - self._clock()
        if left <= 0:
            raise BuildTimeout(self.limit)
        return left


_output_logger = logging.getLogger(__name__ + ".output")


def _log_output(text, level):
    """Nix's words, a log event per line, so they carry the request's id."""
    if _output_logger.isEnabledFor(level):
        for line in text.splitlines():
            if line.strip():
                _output_logger.log(level, "%s", line)


TMP_PREFIX = "registry-nix-"


def remove_orphaned_folders(root=None):
    """Remove the temporary folders (see Nix._run) and GC root folders (see
    Nix.roots) of processes that died before they could: a worker killed
    mid-build leaves its folder."""
    root = root or tempfile.gettempdir()
    for name in os.listdir(root):
        pid = name[len(TMP_PREFIX):].split("-", 1)[0]
        if not (name.startswith(TMP_PREFIX) and pid.isdigit()):
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its process lives, and removes it itself
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, as another user
        logger.info("removing %s, left by a process that died mid-build", name)
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)


class Nix:
    """`roots_path`: where builds keep the garbage collector roots of what
    they built (Nix.roots); None: they keep none."""

    def __init__(self, image_nix=IMAGE_NIX, roots_path=None):
        self.image_nix = image_nix
        self.roots_path = roots_path
        remove_orphaned_folders()
        if roots_path and os.path.isdir(roots_path):
            remove_orphaned_folders(roots_path)

    @contextlib.contextmanager
    def roots(self):
        """A folder for realise(..., roots=) to root what it builds in, for
        as long as the build reads those store paths; removed after, and
        Nix drops the roots at its next collection.  Without them a
        collection of the store (nix-collect-garbage, or Nix's own when
        space runs short) could delete a package between its build and the
        layers made from it.  None when this Nix keeps no roots."""
        if not self.roots_path:
            yield None
            return
        os.makedirs(self.roots_path, exist_ok=True)
        folder = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=self.roots_path)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _run(self, cmd, deadline: Deadline) -> process.Completed:
        logger.debug("running %s", cmd)
        left = deadline.remaining()
        # coreutils timeout enforces the deadline even if this worker dies
        # mid-build: Nix stops its builders on SIGTERM; SIGKILL follows.
        guarded = ["timeout", f"--kill-after={KILL_GRACE}", f"{left + 1:.1f}", *cmd]
        if deadline.log_path:
            with open(deadline.log_path, "a") as log:
                log.write(f"$ {' '.join(cmd[:4])} ...\n")
        # Nix makes its build folders (nix-build-*) under TMPDIR and leaves
        # them behind when it is killed: each command gets a folder of its
        # own, removed whatever happened.  (With a Nix daemon the daemon
        # makes them, and cleans up after the builds it stops.)
        tmp = tempfile.TemporaryDirectory(prefix=f"{TMP_PREFIX}{os.getpid()}-",
                                          ignore_cleanup_errors=True)
        os.chmod(tmp.name, 0o755)  # builders run as Nix's build users, who must reach it
        try:
            done = process.run(guarded, timeout=left, log_path=deadline.log_path,
                               env=dict(os.environ, TMPDIR=tmp.name))
        except process.Timeout as e:
            _log_output(e.stderr_tail, logging.INFO)
            raise BuildTimeout(deadline.limit, log_tail=clean_log(e.stderr_tail)) from None
        except FileNotFoundError:
            raise BuildInterrupted("the registry cannot run timeout: is coreutils installed?",
                                   cause="setup") from None
        finally:
            tmp.cleanup()
        _log_output(done.stderr_tail, logging.DEBUG if done.returncode == 0 else logging.INFO)
        if done.returncode == 124:
            # the guard fired just before our own deadline did
            raise BuildTimeout(deadline.limit, log_tail=clean_log(done.stderr_tail))
        if done.returncode == 127 and "failed to run command" in done.stderr_tail:
            raise BuildInterrupted(f"the registry cannot run {cmd[0]}: is Nix installed?",
                                   cause="setup")
        if done.returncode != 0:
            trouble = nixlog.machine_trouble(clean_log(done.stderr_tail), done.returncode, cmd[0])
            if trouble is not None:
                raise trouble
        return done

    def _image_args(self, source: dict, system: str, attribute_paths):
        return [
            self.image_nix,
            "--argstr", "sourceJson", json.dumps(source, sort_keys=True),
            "--argstr", "system", system,
            "--argstr", "packagesJson", json.dumps(attribute_paths),
        ]

    def resolve(self, source: dict, system: str, attribute_paths, deadline) -> list[Resolved]:
        """Look every attribute path up; derivations are instantiated for realise()."""
        cmd = ["nix-instantiate", "--eval", "--strict", "--json", "--read-write-mode",
               *FETCH_OPTIONS, *self._image_args(source, system, attribute_paths),
               "-A", "report"]
        done = self._run(cmd, deadline)
        if done.returncode != 0:
            raise nixlog.source_or_eval_error(done.stderr_tail)
        results = []
        for entry in json.loads(done.stdout):
            results.append(Resolved(
                requested=".".join(entry["requested"]),
                status=entry["status"],
                attr_path=".".join(entry.get("attrPath") or entry["requested"]),
                drv=entry.get("drv"),
                out=entry.get("out"),
                output_name=entry.get("outputName", "out"),
                siblings=tuple(entry.get("siblings", ())),
                name=entry.get("name", ""),
                version=entry.get("version", ""),
                description=entry.get("description", ""),
                platforms=tuple(entry.get("platforms", ())),
                licenses=tuple(entry.get("licenses", ())),
                source_date=entry.get("sourceDate"),
            ))
        return results

    def explain(self, source: dict, system: str, attribute_paths, index, deadline) -> str:
        """Why the package at `index` cannot be evaluated, in Nix's words."""
        cmd = ["nix-instantiate", "--eval", "--json", *FETCH_OPTIONS,
               *self._image_args(source, system, attribute_paths),
               "--argstr", "explainIndex", str(index), "-A", "explain"]
        done = self._run(cmd, deadline)
        if done.returncode == 0:
            return "it is not a buildable derivation"
        return clean_log(done.stderr_tail)

    def realise(self, outputs: dict[str, str], deadline, roots=None) -> None:
        """Build (or substitute) `drv!output` for each requested package,
        each output rooted in the folder `roots` (Nix.roots) when given.

        `outputs` maps drv!output -> the requested name, to say which
        package failed.  DerivationsCollected: a collection of the store
        deleted derivations since they were evaluated.
        """
        # Nix's own builder timeout too, so builders die at the deadline
        # whatever happens to the processes above them
        cmd = ["nix-store", "--realise", "--timeout", str(math.ceil(deadline.remaining())),
               *FETCH_OPTIONS]
        if roots:
            cmd += ["--add-root", os.path.join(roots, "result")]
        done = self._run(cmd + sorted(outputs), deadline)
        if done.returncode == 0:
            return
        raise nixlog.realise_error(clean_log(done.stderr_tail), outputs, deadline.limit)

    def closure(self, paths, deadline) -> list[StorePath]:
        """Every store path the given paths need at run time, with NAR sizes and references."""
        cmd = ["nix", "--extra-experimental-features", "nix-command", "path-info",
               "--json", "--recursive", *sorted(paths)]
        done = self._run(cmd, deadline)
        if done.returncode != 0:
            raise BuildFailed("could not read the closure from the Nix store",
                              log_tail=clean_log(done.stderr_tail))
        return parse_path_info(json.loads(done.stdout))


