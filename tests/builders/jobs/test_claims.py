"""One build per image across instances: claims with leases, in storage."""
import json
import subprocess
import sys
import threading

import pytest

from builders.jobs.claims import Claims
from builders.errors import BuildInProgress
from builders.image.names import Image
from builders.image.records import cache_key
from storage import FilesystemStorage, keys
from tests.builders.test_service import service
from tests.conftest import ROOT, at_once, drowsy_set


def owner(store, key="k"):
    """Who the claim in storage names."""
    return json.loads(store.read(keys.claim(key)))["owner"]


def test_a_claim_is_held_until_its_lease_ends_or_it_is_released(tmp_path):
    store = FilesystemStorage(tmp_path)
    now = [1000.0]
    one = Claims(store, lease=60, owner="one", clock=lambda: now[0])
    two = Claims(store, lease=60, owner="two", clock=lambda: now[0])
    claim = one.acquire("k")
    assert claim is not None and two.acquire("k") is None and owner(store) == "one"
    now[0] += 50
    assert claim.renew()               # pushed out to 1110
    now[0] += 50
    assert two.acquire("k") is None    # still held
    now[0] += 11                       # one died and stopped renewing
    taken = two.acquire("k")
    assert taken is not None and owner(store) == "two"
    assert not claim.renew()           # one cannot take it back
    taken.release()
    assert json.loads(store.read(keys.claim("k")))["released"]
    assert one.acquire("k") is not None and owner(store) == "one"


def test_of_instances_claiming_at_once_one_wins(tmp_path):
    store = FilesystemStorage(tmp_path)
    claims = at_once(6, lambda i: Claims(store, owner=str(i)).acquire("k"))
    assert sum(claim is not None for claim in claims) == 1


def two_instances(tmp_path, seconds):
    """Two image services on one storage, each with its own machine state."""
    pkgs = drowsy_set(tmp_path / "pkgs", seconds)
    one = service(tmp_path / "store", pkgs=pkgs, state=tmp_path / "one")
    two = service(tmp_path / "store", pkgs=pkgs, state=tmp_path / "two")
    return one, two


def test_two_instances_pulling_one_new_image_build_it_once(tmp_path):
    one, two = two_instances(tmp_path, 3)
    records = {}
    threads = [threading.Thread(target=lambda s=s: records.update(
        {s: s.image(Image.from_name("drowsy"), "latest", wait=60)})) for s in (one, two)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert records[one].manifests == records[two].manifests
    # resolve, realise and closure by one; the other waited for its record
    assert sorted([one.nix.runs, two.nix.runs]) == [0, 3]


def test_the_claim_of_an_instance_that_died_is_taken_over(tmp_path, caplog):
    one, two = two_instances(tmp_path, 1)
    two.claims.lease = 2
    image = Image.from_name("drowsy")
    key = cache_key(two.pinned(image), two.revisions.resolve("latest"), two.max_layers)
    # an instance claimed the image, then died without a word
    Claims(one.storage, lease=2, owner="died mid-build").acquire(key)
    record = two.image(image, "latest", wait=60)
    assert record.packages == ["drowsy"]
    assert two.nix.runs == 3  # resolve, realise, closure: the build, by two
    assert "taking over the claim of died mid-build" in caplog.text


def test_a_pull_waiting_for_another_instances_build_says_so_in_a_users_words(tmp_path):
    one, two = two_instances(tmp_path, 4)
    image = Image.from_name("drowsy")
    with pytest.raises(BuildInProgress):
        one.image(image, "latest", wait=0.5)
    with pytest.raises(BuildInProgress) as info:
        two.image(image, "latest", wait=1)
    assert info.value.progress == "waiting for the build another pull started"
    assert "worker" not in info.value.message and "instance" not in info.value.message
    assert two.image(image, "latest", wait=60).manifests == \
        one.image(image, "latest", wait=60).manifests


def claim_in_a_process_that_exits(store, key):
    """A claim made by another process of this machine, which then exits
    without a word (as a worker killed mid-build does)."""
    code = ("import sys; from builders.jobs.claims import Claims; from storage import "
            "FilesystemStorage; Claims(FilesystemStorage(sys.argv[1]), lease=600, "
            "owner='killed worker').acquire(sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, str(store.root), key], check=True,
                   cwd=ROOT)


def test_on_one_machine_the_claim_of_a_process_that_is_gone_is_taken_at_once(tmp_path, caplog):
    store = FilesystemStorage(tmp_path)
    claim_in_a_process_that_exits(store, "k")
    assert owner(store) == "killed worker"
    taken = Claims(store, lease=600, owner="two").acquire("k")  # long before the lease ends
    assert taken is not None and owner(store) == "two"
    assert "taking over the claim of killed worker on k: its process (pid " in caplog.text
    # a live process's claim is its own, however many Claims look at it
    assert Claims(store, lease=600, owner="three").acquire("k") is None


def test_a_reused_pid_does_not_keep_a_dead_claim(tmp_path):
    store = FilesystemStorage(tmp_path)
    held = json.loads(Claims(store, lease=600, owner="one").record())
    # a process of this pid that started at another time held it
    store.put_bytes(keys.claim("k"), json.dumps({**held, "started": held["started"] - 1}).encode())
    assert Claims(store, lease=600, owner="two").acquire("k") is not None


def test_across_machines_the_lease_is_the_rule(tmp_path):
    store = FilesystemStorage(tmp_path)
    now = [1000.0]
    held = json.loads(Claims(store, lease=600, owner="one", clock=lambda: now[0]).record())
    # a process of another machine, whose pid here means nothing
    store.put_bytes(keys.claim("k"), json.dumps(
        {**held, "machine": "another boot/pid:[4026531836]", "pid": 2 ** 22 + 1}).encode())
    two = Claims(store, lease=600, owner="two", clock=lambda: now[0])
    assert two.acquire("k") is None
    now[0] += 601
    assert two.acquire("k") is not None
