"""The build history several worker processes share."""
import multiprocessing

from builders.jobs.history import BuildHistory


def _open_and_record(root, n, queue, barrier):
    try:
        barrier.wait()
        history = BuildHistory(root)
        b = history.start(f"amd64:img{n}", "latest", f"k{n}")
        history.built(b, closure_size=n, key=f"k{n}", layers=[{"digest": "sha256:x", "size": 1,
                                                                "paths": 1}])
        queue.put("ok")
    except Exception as e:  # reported to the test, which fails with it
        queue.put(repr(e))


def test_workers_starting_together_all_open_the_history(tmp_path):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    barrier = ctx.Barrier(8)
    procs = [ctx.Process(target=_open_and_record, args=(str(tmp_path), n, queue, barrier))
             for n in range(8)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join()
    assert results == ["ok"] * 8
    history = BuildHistory(str(tmp_path))
    assert len(history.recent(20)) == 8
    assert history.sharing(["sha256:x"]) == {"sha256:x": 8}


def test_interrupted_build_is_not_shown_as_building(tmp_path):
    history = BuildHistory(str(tmp_path))
    first = history.start("amd64:hello", "latest", "k")
    history.start("amd64:hello", "latest", "k")
    assert history.get(first.id).status == "failed"
    assert "interrupted" in history.get(first.id).message


def test_opening_beside_a_busy_writer(tmp_path):
    """A worker restarted while another holds the write lock still starts."""
    import sqlite3
    BuildHistory(str(tmp_path))
    busy = sqlite3.connect(str(tmp_path / "builds.sqlite"), isolation_level=None)
    busy.execute("BEGIN EXCLUSIVE")
    try:
        history = BuildHistory(str(tmp_path))
        assert history.recent() == []
    finally:
        busy.execute("COMMIT")
    assert history.start("amd64:hello", "latest", "k").status == "building"


def test_builds_are_listed_as_asked_and_typos_are_no_builds(tmp_path):
    import sqlite3
    history = BuildHistory(str(tmp_path))
    built = history.start("amd64:bashinteractive/cacert/hello", "latest", "k1",
                          asked="shell/hello")
    history.built(built, closure_size=1, key="k1", layers=[])
    typo = history.start("amd64:hellp", "latest", "k2", asked="hellp")
    history.failed(typo, status="failed", code="PackagesNotFound",
                   message="package not found in the package source: hellp (did you mean hello?)")
    broken = history.start("amd64:broken", "latest", "k3", asked="broken")
    history.failed(broken, status="failed", code="BuildFailed", message="package broken failed")
    assert [b.asked for b in history.recent()] == ["broken", "shell/hello"]
    assert [b.asked for b in history.recent(failed=True)] == ["broken"]
    # a history from before names were kept as asked opens, and lists them unnamed
    db = sqlite3.connect(str(tmp_path / "builds.sqlite"), isolation_level=None)
    db.execute("ALTER TABLE builds DROP COLUMN asked")
    db.close()
    assert [b.asked for b in BuildHistory(str(tmp_path)).recent()] == [None, None]
