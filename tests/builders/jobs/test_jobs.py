"""Jobs: one per image at a time, running whether or not anyone waits."""
import threading

import pytest

from builders.errors import BuildFailed
from builders.jobs.jobs import Jobs, realise_progress


def test_realise_progress_from_the_log():
    log = "\n".join([
        "these 3 derivations will be built:",
        "  /nix/store/aaa-a.drv", "  /nix/store/bbb-b.drv", "  /nix/store/ccc-c.drv",
        "these 2 paths will be fetched (1.0 MiB download, 4.0 MiB unpacked):",
        "  /nix/store/ddd-d", "  /nix/store/eee-e",
        "copying path '/nix/store/ddd-d' from 'https://cache.nixos.org'...",
        "building '/nix/store/aaa-a.drv'...",
    ])
    assert realise_progress(log) == (2, 5)
    assert realise_progress("this derivation will be built:\n  /nix/store/x.drv\n") == (0, 1)
    assert realise_progress("") == (0, 0)


def test_one_job_per_key_and_it_outlives_its_waiters():
    jobs = Jobs()
    release = threading.Event()
    runs = []

    def run(job):
        runs.append(job.key)
        job.set_phase("realising")
        release.wait(10)
        return "record"

    first = jobs.start("k", "hello", "latest", run)
    second = jobs.start("k", "hello", "latest", run)
    assert first is second
    assert not first.wait(0.1)            # the waiter gives up ...
    assert first.progress() == "realising"
    assert jobs.running() == [first]
    release.set()                          # ... and the job goes on to the end
    assert first.wait(10) and first.outcome() == "record"
    assert runs == ["k"] and jobs.running() == []
    # a later start is a new job
    assert jobs.start("k", "hello", "latest", lambda job: "again").wait(10)


def test_every_waiter_gets_the_error_as_a_new_exception():
    jobs = Jobs()
    job = jobs.start("k", "broken", "latest",
                     lambda job: (_ for _ in ()).throw(BuildFailed("package broken failed")))
    assert job.wait(10)
    with pytest.raises(BuildFailed) as one:
        job.outcome()
    with pytest.raises(BuildFailed) as two:
        job.outcome()
    assert one.value is not two.value and one.value.message == "package broken failed"


def test_progress_counts_store_paths_and_layers(tmp_path):
    jobs = Jobs()
    release = threading.Event()
    log = tmp_path / "build.log"
    log.write_text("these 4 derivations will be built:\nbuilding '/nix/store/a.drv'...\n")

    def run(job):
        job.log_path = str(log)
        job.set_phase("realising")
        release.wait(10)

    job = jobs.start("k", "x", "latest", run)
    for _ in range(100):
        if job.phase == "realising":
            break
        job.wait(0.01)
    assert job.progress() == "realising: started 1 of 4 store paths to build or fetch"
    job.set_phase("making layers")
    job.layers(3)
    job.layer_done(2_500_000)
    assert job.progress() == "making layers: 1 of 3 stored, 2.5 MB"
    job.set_phase("realising")
    log.write_text("this derivation will be built:\n")
    assert job.progress() == "realising: started 0 of 1 store path to build or fetch"
    release.set()
    assert job.wait(10)


def test_a_storage_failure_reaches_each_waiter_as_its_own_exception():
    from storage.errors import StorageUnavailable
    jobs = Jobs()

    def run(job):
        raise StorageUnavailable("the bucket is unreachable")
    job = jobs.start("k", "hello", "latest", run)
    assert job.wait(10)
    raised = []
    for _ in range(2):
        with pytest.raises(StorageUnavailable) as info:
            job.outcome()
        raised.append(info.value)
    assert raised[0] is not raised[1] and str(raised[1]) == "the bucket is unreachable"
