"""Operators' commands through the Flask CLI."""
import re
import time

from builders.jobs.failures import RECHECK_SECONDS
from builders.image.names import Image


def test_prebuild_builds_names_and_a_file_of_them(app, tmp_path):
    names = tmp_path / "popular.txt"
    names.write_text("# after the channel moved\nshell/hello\n\nhello  # again: once\n")
    result = app.test_cli_runner().invoke(args=["prebuild", "curl", "--file", str(names)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "curl:latest: built in" in result.output
    assert any(line.startswith("shell/hello:latest: built in") for line in lines)
    assert any(line.startswith("hello:latest: built in") for line in lines)
    # a pull now finds them made: no job is started
    images = app.extensions["images"]
    assert not hasattr(images.start(Image.from_name("curl"), "latest"), "wait")
    again = app.test_cli_runner().invoke(args=["prebuild", "curl"])
    assert again.exit_code == 0 and "curl:latest: already built" in again.output


def test_prebuild_says_what_failed_and_exits_1(app):
    result = app.test_cli_runner().invoke(args=["prebuild", "hello", "nosuchpkg", "broken"])
    assert result.exit_code == 1
    assert "hello:latest: built in" in result.output
    assert "nosuchpkg:latest: failed: package not found in the package source: nosuchpkg" \
        in result.output
    assert "broken:latest: failed: package broken failed to build" in result.output


def test_prebuild_refuses_what_is_no_image_name(app):
    result = app.test_cli_runner().invoke(args=["prebuild", "Not/Valid"])
    assert result.exit_code == 2 and "not an image name: Not/Valid" in result.output
    result = app.test_cli_runner().invoke(args=["prebuild"])
    assert result.exit_code == 2


def test_prebuild_makes_every_platform(tmp_path):
    from app import create_app
    from app.config import Config
    from builders.image.platforms import AMD64, ARM64
    from builders.image.records import IndexRecord
    from tests.conftest import PKGS
    app = create_app(Config(pkgs_path=str(PKGS), storage_path=str(tmp_path / "s"),
                            platforms=(AMD64, ARM64)))
    result = app.test_cli_runner().invoke(args=["prebuild", "curl", "no-arm"])
    assert result.exit_code == 1
    assert "curl:latest: built in" in result.output
    assert "no-arm:latest: failed: linux/arm64 (aarch64-linux): package no-arm failed" \
        in result.output
    index = app.extensions["images"].start(Image.from_name("curl"), "latest")
    assert isinstance(index, IndexRecord) and set(index.members) == {"linux/amd64", "linux/arm64"}


def test_sbom_backfills_images_built_before_sboms(tmp_path):
    import json
    import os
    from app import create_app
    from app.config import Config
    from storage import keys
    from tests.conftest import PKGS
    config = Config(pkgs_path=str(PKGS), storage_path=str(tmp_path / "s"))
    first = create_app(config)
    images = first.extensions["images"]
    record = images.image(Image.from_name("hello"), "latest")
    # as a record of the registry before SBOMs: no SBOM, no referrers
    store = first.extensions["storage"]
    old = json.loads(record.to_json())
    del old["sbom"], old["licenses"]
    store.put_bytes(keys.manifest(record.key), json.dumps(old).encode(), "application/json")
    for subject in record.sbom["referrers"]:
        os.remove(store._path(keys.referrers(subject)))

    app = create_app(config)  # another process, which reads the old record
    client = app.test_client()
    subject = client.get("/v2/hello/manifests/latest").headers["Docker-Content-Digest"]
    assert client.get(f"/v2/hello/referrers/{subject}").get_json()["manifests"] == []
    assert "built before the registry made SBOMs" in client.get("/builds/hello").get_data(
        as_text=True)
    result = app.test_cli_runner().invoke(args=["sbom", "hello", "git"])
    assert result.exit_code == 0, result.output
    assert "hello:latest (linux/amd64): made" in result.output
    assert "git:latest (linux/amd64): not built" in result.output
    listed = client.get(f"/v2/hello/referrers/{subject}").get_json()["manifests"]
    assert [m["digest"] for m in listed] == [record.sbom["referrers"][subject]["digest"]]
    # the image is served as it was
    assert client.get("/v2/hello/manifests/latest").headers["Docker-Content-Digest"] == subject
    again = app.test_cli_runner().invoke(args=["sbom", "hello"])
    assert "hello:latest (linux/amd64): has one" in again.output


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
