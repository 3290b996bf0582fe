"""Build quotas per client, and fair turns for build slots."""
import threading
import time

import pytest

from app.quota import BuildQuota, client_key
from builders.errors import QuotaExceeded
from builders.image.names import Image
from builders.jobs.jobs import Job
from builders.jobs.locks import BuildLocks, FairTurns
from tests.builders.test_service import service
from tests.conftest import drowsy_set


def test_who_a_request_counts_against():
    assert client_key("alice", "10.0.0.1") == "user:alice"
    assert client_key(None, "10.0.0.1") == "address:10.0.0.1"
    # one IPv6 machine has a whole /64
    assert client_key(None, "2001:db8:1:2:aaaa::1") == client_key(None, "2001:db8:1:2:bbbb::9")
    assert client_key(None, "2001:db8:1:2::1") == "address:2001:db8:1:2::/64"
    assert client_key(None, "2001:db8:1:3::1") != client_key(None, "2001:db8:1:2::1")
    assert client_key(None, "::ffff:10.0.0.1") == "address:10.0.0.1"


def quota(tmp_path, clock, per_hour=3, at_once=2):
    return BuildQuota(str(tmp_path / "quotas.json"), per_hour=per_hour, at_once=at_once,
                      hold_seconds=600, clock=clock)


def test_at_once_and_per_hour(tmp_path):
    now = [1000.0]
    q = quota(tmp_path, lambda: now[0])
    a, b = q.reserve("user:alice"), q.reserve("user:alice")
    with pytest.raises(QuotaExceeded, match="user alice already started 2 builds that are not "
                                            "done, the most one client may have at once"):
        q.reserve("user:alice")
    q.reserve("user:bob").release()  # another client is not held up
    a.charge()
    a.release()
    b.charge()
    b.release()
    c = q.reserve("user:alice")
    c.charge()
    c.release()
    now[0] += 600
    with pytest.raises(QuotaExceeded) as e:  # three builds in the hour
        q.reserve("user:alice")
    assert "started 3 builds in the last hour" in e.value.message
    assert e.value.retry_after == 3001 and "50 min 1 s" in e.value.message
    now[0] += 3001
    q.reserve("user:alice")


def test_limits_of_one_say_one_build(tmp_path):
    now = [1000.0]
    q = quota(tmp_path, lambda: now[0], per_hour=1, at_once=1)
    held = q.reserve("address:192.0.2.7")
    with pytest.raises(QuotaExceeded, match="address 192.0.2.7 already started 1 build that is "
                                            "not done,"):
        q.reserve("address:192.0.2.7")
    held.charge()
    held.release()
    with pytest.raises(QuotaExceeded, match="started 1 build in the last hour,"):
        q.reserve("address:192.0.2.7")


def test_a_job_that_finds_its_image_built_does_not_count_in_the_hour(tmp_path):
    q = quota(tmp_path, time.time, per_hour=1, at_once=5)
    for _ in range(4):
        q.reserve("address:10.0.0.1").release()  # never charged: nothing was built
    built = q.reserve("address:10.0.0.1")
    built.charge()
    with pytest.raises(QuotaExceeded, match="in the last hour"):
        q.reserve("address:10.0.0.1")


def test_worker_processes_share_the_counts_and_dead_ones_free_theirs(tmp_path):
    now = [0.0]
    one, two = quota(tmp_path, lambda: now[0]), quota(tmp_path, lambda: now[0])
    one.reserve("user:alice")
    two.reserve("user:alice")
    with pytest.raises(QuotaExceeded):
        one.reserve("user:alice")
    now[0] += 601  # their process died without giving them back
    two.reserve("user:alice")


def test_joining_a_build_or_pulling_a_built_image_never_counts(tmp_path):
    svc = service(tmp_path / "s", pkgs=drowsy_set(tmp_path / "pkgs", 3))
    svc.quota = quota(tmp_path, time.time, per_hour=1, at_once=1)
    first = svc.start(Image.from_name("drowsy"), "latest", "user:alice")
    assert isinstance(first, Job)
    deadline = time.monotonic() + 60
    while first.reservation is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the job found nothing built, and took alice's room
    # bob joins alice's build: not his, not refused
    assert svc.start(Image.from_name("drowsy"), "latest", "user:bob") is first
    with pytest.raises(QuotaExceeded, match="at once"):
        svc.image(Image.from_name("hello"), "latest", client="user:alice")
    svc.image(Image.from_name("drowsy"), "latest", wait=120, client="user:alice")
    # built: pulling it again costs nothing, in another process too (which
    # finds it in storage), and a new image is past the hour's one
    for _ in range(3):
        svc.image(Image.from_name("drowsy"), "latest", client="user:alice")
    other = service(tmp_path / "s", pkgs=drowsy_set(tmp_path / "pkgs", 3))
    other.quota = svc.quota
    other.image(Image.from_name("drowsy"), "latest", client="user:alice")
    with pytest.raises(QuotaExceeded, match="in the last hour"):
        svc.image(Image.from_name("hello"), "latest", client="user:alice")
    svc.image(Image.from_name("hello"), "latest", client="user:bob")


def test_fair_turns_between_clients(tmp_path):
    turns = FairTurns(str(tmp_path))
    alice = [turns.enter("alice") for _ in range(3)]
    bob = turns.enter("bob")
    assert turns.first(alice[0]) and not turns.first(bob)
    turns.leave(alice[0], holding=True)
    # alice holds a slot and bob none: bob goes before alice's other builds
    assert turns.first(bob) and not turns.first(alice[1])
    turns.leave(bob, holding=True)
    assert turns.first(alice[1])
    turns.done("alice")
    turns.done("bob")
    assert turns.first(alice[1])


def test_a_full_single_slot_is_named_as_one(tmp_path):
    from builders.errors import BuildQueueFull
    locks = BuildLocks(str(tmp_path / "locks"), max_builds=1, queue_timeout=0)
    with locks.slot(client="alice"):
        with pytest.raises(BuildQueueFull, match=r"^the only build slot is busy "
                                                 r"\(NIXERY_MAX_BUILDS\)"):
            with BuildLocks(str(tmp_path / "locks"), max_builds=1, queue_timeout=0).slot():
                pass


def test_one_slot_is_shared_fairly_between_a_flood_and_one_build(tmp_path):
    # two workers of one machine: alice's flood comes through one, bob's
    # build through the other
    locks = BuildLocks(str(tmp_path / "locks"), max_builds=1, queue_timeout=60)
    other = BuildLocks(str(tmp_path / "locks"), max_builds=1, queue_timeout=60)
    order, lock = [], threading.Lock()
    release = threading.Event()

    def build(client, name, hold=0.05):
        with (other if client == "bob" else locks).slot(client=client):
            with lock:
                order.append(name)
            if name == "a0":
                release.wait(10)
            else:
                time.sleep(hold)

    first = threading.Thread(target=build, args=("alice", "a0"))
    first.start()
    time.sleep(0.2)  # a0 holds the slot
    waiting = [threading.Thread(target=build, args=("alice", f"a{i}")) for i in range(1, 5)]
    for t in waiting:
        t.start()
        time.sleep(0.05)  # alice's flood is queued first
    bob = threading.Thread(target=build, args=("bob", "b1"))
    bob.start()
    time.sleep(0.2)
    release.set()
    for t in [first, *waiting, bob]:
        t.join()
    assert order.index("b1") == 1, order  # next after the build that held the slot


def test_a_dead_workers_place_in_the_queue_is_dropped(tmp_path):
    import json
    import subprocess
    gone = subprocess.Popen(["true"])
    gone.wait()
    turns = FairTurns(str(tmp_path))
    (tmp_path / "turns.json").write_text(json.dumps({
        "count": 5, "waiting": [[1, "alice", gone.pid]], "holding": [["alice", gone.pid]],
        "served": {}}))
    mine = turns.enter("bob")
    assert turns.first(mine)
