"""Operators' commands that look after storage (gc, failures), through the
Flask CLI."""
import re
import time

from builders.image.names import Image
from builders.jobs.failures import RECHECK_SECONDS


def test_gc_says_what_would_go_then_deletes_it(tmp_path):
    import os
    import time
    from app import create_app
    from app.config import Config
    from storage import keys
    from tests.conftest import PKGS
    app = create_app(Config(pkgs_path=str(PKGS), storage_path=str(tmp_path / "s")))
    store = app.extensions["storage"]
    kept = app.extensions["images"].image(Image.from_name("hello"), "latest")
    junk = b"z" * 300_000
    digest = "sha256:" + __import__("hashlib").sha256(junk).hexdigest()
    store.put_bytes(keys.blob(digest), junk)
    old = time.time() - 3 * 24 * 3600  # older than the grace period
    os.utime(store._path(keys.blob(digest)), (old, old))

    dry = app.test_cli_runner().invoke(args=["gc", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"would delete layers/{digest} (0.3 MB)" in dry.output
    assert "would delete 1 object, 0.3 MB in all" in dry.output
    assert store.exists(keys.blob(digest))
    assert "listing storage" in dry.stderr  # the progress bar

    run = app.test_cli_runner().invoke(args=["gc"])
    assert run.exit_code == 0, run.output
    assert f"deleted layers/{digest} (0.3 MB)" in run.output
    assert "layers: deleted 1 object, 0.3 MB" in run.output
    assert not store.exists(keys.blob(digest))
    assert store.exists(keys.manifest(kept.key))
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert "registry_gc_runs_total 1.0" in metrics
    assert "registry_gc_freed_bytes_total 300000.0" in metrics
    assert 'registry_stored_objects{kind="manifests"} 1.0' in metrics


def builds_of(app, name):
    """How many times the app ran a build of the image `name` (its history)."""
    return sum(1 for b in app.extensions["images"].history.recent(1000)
               if b.image.endswith(f":{name}"))


def failures_cleared_everywhere(first, second):
    """`failures list` and `failures clear` with `first`, seen by `second`,
    another instance on the same storage."""
    for app in (first, second):
        assert app.test_client().get("/v2/broken/manifests/latest").status_code == 422
    assert first.test_client().get("/v2/arm64/broken/manifests/latest").status_code == 422
    assert builds_of(first, "broken") == 2 and builds_of(second, "broken") == 0
    runner = first.test_cli_runner()
    listed = runner.invoke(args=["failures", "list"])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert len(lines) == 2
    line = next(l for l in lines if "broken:latest (x86_64-linux)" in l)
    assert re.match(r"\d+s ago  in force 59m more  verdict \(build-error\)  "
                    r"broken:latest \(x86_64-linux\)  key [0-9a-f]{12}  package broken failed "
                    r"to build \(broken-1\.0 with exit code 1\)$", line), line
    # the arm64 failure only
    cleared = runner.invoke(args=["failures", "clear", "arm64/broken"])
    assert cleared.exit_code == 0, cleared.output
    assert cleared.output.startswith("cleared arm64/broken:latest (aarch64-linux): package "
                                     "broken")
    assert "cleared 1 failure;" in cleared.output
    assert len(runner.invoke(args=["failures", "list"]).output.splitlines()) == 1
    # as a client wrote it, with its tag
    cleared = runner.invoke(args=["failures", "clear", "broken:latest"])
    assert cleared.output.startswith("cleared broken:latest (x86_64-linux): package broken")
    assert runner.invoke(args=["failures", "list"]).output == \
        "no remembered failures answer pulls\n"
    # the other instance runs Nix again within seconds, whatever it remembered
    deadline = time.monotonic() + RECHECK_SECONDS + 5
    while builds_of(second, "broken") == 0:
        assert time.monotonic() < deadline, "the other instance kept the cleared verdict"
        assert second.test_client().get("/v2/broken/manifests/latest").status_code == 422
        time.sleep(0.5)
    assert runner.invoke(args=["failures", "clear", "--all"]).output.startswith(
        "cleared broken:latest (x86_64-linux)")
    assert runner.invoke(args=["failures", "clear", "hello"]).output == \
        "no remembered failures of hello\n"


def test_failures_are_listed_and_cleared_for_every_instance(tmp_path):
    from app import create_app
    from app.config import Config
    from builders.image.platforms import AMD64, ARM64
    from tests.conftest import PKGS

    def instance(name):
        return create_app(Config(pkgs_path=str(PKGS), storage_path=str(tmp_path / "s"),
                                 state_path=str(tmp_path / name), platforms=(AMD64, ARM64)))
    failures_cleared_everywhere(instance("one"), instance("two"))


def test_failures_are_listed_and_cleared_on_gcs(tmp_path, gcs_emulator, gcs_bucket):
    from app import create_app
    from app.config import Config
    from builders.image.platforms import AMD64, ARM64
    from tests.conftest import PKGS

    def instance(name):
        return create_app(Config(pkgs_path=str(PKGS), storage_path=str(tmp_path / "unused"),
                                 storage_backend="gcs", bucket=gcs_bucket,
                                 gcs_endpoint=gcs_emulator.url,
                                 state_path=str(tmp_path / name), platforms=(AMD64, ARM64)))
    failures_cleared_everywhere(instance("one"), instance("two"))


def test_failures_clear_says_what_it_takes(app):
    runner = app.test_cli_runner()
    for args in (["failures", "clear"], ["failures", "clear", "--all", "hello"],
                 ["failures", "clear", "Hello!"], ["failures", "clear", "hello/shell"]):
        result = runner.invoke(args=args)
        assert result.exit_code == 2 and "Traceback" not in result.output, args
    assert "shell is a meta-package; put it first: shell/hello" in runner.invoke(
        args=["failures", "clear", "hello/shell"]).output
