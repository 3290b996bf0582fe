"""The counting of what the caching nginx in front answered from its cache
alone (app/front_reports.py, front_file.py, front_udp.py): its report
lines parsed, counted in batches into the registry's own counters,
received over UDP or read from the file nginx appends to, where what was
counted is freed."""
import os
import socket
import time

import pytest
from prometheus_client import REGISTRY

from app import front_file, front_reports, front_udp
from app.config import Config, ConfigError
from tests.server import free_port


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def blob_gets(status):
    return sample("registry_http_requests_total", route="registry.blobs", method="GET",
                  status=status)


def wait_until(check, what, seconds=10):
    end = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < end, what
        time.sleep(0.05)


# --- lines and counts -------------------------------------------------

@pytest.mark.parametrize("line,report", [
    (b"<190>Dec  5 07:00:00 registry_front: blob GET 200 1143158",
     front_reports.Report("blob", "GET", "200", 1143158)),
    (b"<190>Dec  5 07:00:00 registry_front: manifest HEAD 200 0",
     front_reports.Report("manifest", "HEAD", "200", 0)),
    (b"registry_front: blob GET 206 10", front_reports.Report("blob", "GET", "206", 10)),
])
def test_report_lines_are_read(line, report):
    assert front_reports.parse(line) == report


@pytest.mark.parametrize("line", [
    b"", b"blob GET 200 5", b"<190>Dec  5 other: blob GET 200 5",
    b"registry_front: blob GET 200", b"registry_front: blob GET 200 5 6",
    b"registry_front: other GET 200 5", b"registry_front: blob POST 200 5",
    b"registry_front: blob GET 2000 5", b"registry_front: blob GET 200 -5",
    b"registry_front: blob GET 200 x", b"registry_front: blob GET 20x 5",
    b"registry_front: \xff GET 200 5",
])
def test_anything_else_is_not(line):
    assert front_reports.parse(line) is None


def test_file_lines_are_read_without_the_syslog_tag():
    assert front_reports.parse_line(b"blob GET 200 5") == front_reports.Report(
        "blob", "GET", "200", 5)
    assert front_reports.parse_line(b"registry_front: blob GET 200 5") is None
    assert front_reports.parse_line(b"blob GET 200 5 6") is None


def test_a_tally_adds_to_the_registrys_own_counters_at_flush():
    key = dict(route="registry.blobs", method="GET", status="200")
    before = sample("registry_http_requests_total", **key)
    bytes_before = sample("registry_served_bytes_total", kind="blob")
    head_before = sample("registry_http_requests_total", route="registry.manifests",
                         method="HEAD", status="200")
    tally = front_reports.Tally()
    for _ in range(3):
        tally.add(front_reports.Report("blob", "GET", "200", 1000))
    tally.add(front_reports.Report("manifest", "HEAD", "200", 0))
    assert tally.pending == 4
    assert sample("registry_http_requests_total", **key) == before  # not yet
    tally.flush()
    assert tally.pending == 0
    assert sample("registry_http_requests_total", **key) == before + 3
    assert sample("registry_served_bytes_total", kind="blob") == bytes_before + 3000
    assert sample("registry_http_requests_total", route="registry.manifests", method="HEAD",
                  status="200") == head_before + 1
    tally.flush()  # nothing twice
    assert sample("registry_http_requests_total", **key) == before + 3


def test_reports_sent_over_udp_are_counted_within_a_flush():
    address = f"127.0.0.1:{free_port()}"
    reports = front_udp.UdpReports(address, flush_seconds=0.2)
    key = dict(route="registry.blobs", method="GET", status="304")
    before = sample("registry_http_requests_total", **key)
    reports.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for line in (b"<190>Dec  5 07:00:00 registry_front: blob GET 304 0",
                         b"garbage", b"<190>Dec  5 07:00:00 registry_front: blob GET 304 0"):
                s.sendto(line, reports.address)
        end = time.monotonic() + 5
        while sample("registry_http_requests_total", **key) < before + 2:
            assert time.monotonic() < end, "the reports were not counted"
            time.sleep(0.05)
    finally:
        reports.stop()
    assert sample("registry_http_requests_total", **key) == before + 2


def test_a_second_listener_on_the_same_address_shares_it():
    """Every gunicorn worker binds the address (SO_REUSEPORT)."""
    address = f"127.0.0.1:{free_port()}"
    first, second = front_udp.UdpReports(address), front_udp.UdpReports(address)
    first.start()
    second.start()
    try:
        assert first._thread is not None and second._thread is not None
    finally:
        first.stop()
        second.stop()


@pytest.mark.parametrize("value", ["8514", "localhost", "127.0.0.1:", "127.0.0.1:0",
                                   "127.0.0.1:70000", "::1:8514", ":8514"])
def test_a_bad_report_address_stops_the_start(value):
    with pytest.raises(ConfigError, match="NIXERY_FRONT_REPORTS"):
        Config.from_env({"NIXERY_FRONT_REPORTS": value})


def test_report_addresses_are_read():
    assert Config.from_env({"NIXERY_FRONT_REPORTS": "127.0.0.1:8514"}).front_reports == \
        "127.0.0.1:8514"
    assert front_udp.UdpReports("[::1]:8514").address == ("::1", 8514)


def test_report_paths_are_read_and_a_folder_is_not():
    where = "/var/lib/nix-image-registry/front/reports"
    assert Config.from_env({"NIXERY_FRONT_REPORTS": where}).front_reports == where
    assert isinstance(front_reports.receiver(where), front_file.FileReports)
    assert isinstance(front_reports.receiver("127.0.0.1:8514"), front_udp.UdpReports)
    with pytest.raises(ConfigError, match="is a folder"):
        Config.from_env({"NIXERY_FRONT_REPORTS": "/var/lib/nix-image-registry/front/"})


# --- the file nginx appends to --------------------------------------------

class Nginx:
    """Appends report lines to the file the way nginx's buffered access_log
    does: whole buffers, with O_APPEND, through the file it opened (which
    it keeps writing to after the path changes, until it opens it again)."""

    def __init__(self, path):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, data: bytes):
        os.write(self.fd, data)

    def reopen(self):
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def close(self):
        os.close(self.fd)


@pytest.fixture
def reader(tmp_path):
    started = []

    def start(path=None):
        reports = front_file.FileReports(str(path or tmp_path / "reports"), flush_seconds=0.1)
        reports.start()
        started.append(reports)
        return reports
    yield start
    for reports in started:
        reports.stop()


def test_the_file_is_counted_and_what_was_counted_freed(tmp_path, reader):
    nginx = Nginx(str(tmp_path / "reports"))
    reports = reader()
    before, bytes_before = blob_gets("251"), sample("registry_served_bytes_total", kind="blob")
    line = b"blob GET 251 1000\n"
    # a few seconds of a busy cache: more than the reader takes at once
    many = (front_file.CHUNK // len(line)) * 2 + 7
    for _ in range(many // 1000):
        nginx.write(line * 1000)
    nginx.write(line * (many % 1000) + b"garbage line\n" + b"manifest HEAD 251 0\n")
    wait_until(lambda: blob_gets("251") >= before + many, "the lines were not counted")
    time.sleep(0.3)  # and not twice
    assert blob_gets("251") == before + many
    assert sample("registry_served_bytes_total", kind="blob") == bytes_before + many * 1000
    assert sample("registry_http_requests_total", route="registry.manifests", method="HEAD",
                  status="251") >= 1
    assert reports.reading.is_set()
    # its size keeps growing, but no more than a block of it takes room
    stat = os.stat(tmp_path / "reports")
    assert stat.st_size > 2 * front_file.CHUNK
    wait_until(lambda: os.stat(tmp_path / "reports").st_blocks * 512 <= 4096,
               f"what was counted was not freed: {os.stat(tmp_path / 'reports')}")
    nginx.close()


def test_a_line_being_written_is_counted_once_it_ends(tmp_path, reader):
    nginx = Nginx(str(tmp_path / "reports"))
    reader()
    before = blob_gets("252")
    nginx.write(b"blob GET 252 1")
    time.sleep(0.4)
    assert blob_gets("252") == before
    nginx.write(b"23\n")
    wait_until(lambda: blob_gets("252") == before + 1, "the line was not counted")
    nginx.close()


def test_one_worker_reads_and_another_takes_over_where_it_stopped(tmp_path, reader):
    nginx = Nginx(str(tmp_path / "reports"))
    first = reader()
    wait_until(first.reading.is_set, "no worker reads the file")
    second = reader()
    before = blob_gets("253")
    nginx.write(b"blob GET 253 10\n" * 500)  # more than a block: some freed
    wait_until(lambda: blob_gets("253") == before + 500, "the lines were not counted")
    assert not second.reading.is_set()
    first.stop()
    wait_until(second.reading.is_set, "no worker took over")
    nginx.write(b"blob GET 253 10\n" * 3)
    wait_until(lambda: blob_gets("253") == before + 503, "the new lines were not counted")
    time.sleep(0.3)
    assert blob_gets("253") == before + 503  # none counted twice
    nginx.close()


def test_a_reader_started_again_counts_only_what_was_not(tmp_path):
    """A registry restarted (or a worker that takes over) begins at the
    first line not freed, whatever nginx wrote meanwhile."""
    nginx = Nginx(str(tmp_path / "reports"))
    before = blob_gets("254")
    first = front_file.FileReports(str(tmp_path / "reports"), flush_seconds=0.1)
    first.start()
    nginx.write(b"blob GET 254 7\n" * 1001)  # ends within a block
    wait_until(lambda: blob_gets("254") == before + 1001, "the lines were not counted")
    first.stop()
    nginx.write(b"blob GET 254 7\n" * 5)
    again = front_file.FileReports(str(tmp_path / "reports"), flush_seconds=0.1)
    again.start()
    try:
        wait_until(lambda: blob_gets("254") == before + 1006, "the new lines were not counted")
        time.sleep(0.3)
        assert blob_gets("254") == before + 1006
    finally:
        again.stop()
    nginx.close()


def test_a_replaced_file_is_read_to_its_end_then_the_new_one(tmp_path, reader):
    """nginx, told to reopen (or restarted), makes the path again; until
    then it writes to the file it has open."""
    path = tmp_path / "reports"
    nginx = Nginx(str(path))
    reports = reader()
    wait_until(reports.reading.is_set, "no worker reads the file")
    before = blob_gets("255")
    os.rename(path, tmp_path / "reports.1")
    nginx.write(b"blob GET 255 1\n" * 4)  # to the old file, moved away
    time.sleep(0.4)
    nginx.reopen()
    nginx.write(b"blob GET 255 1\n" * 6)
    wait_until(lambda: blob_gets("255") == before + 10, "not all lines were counted")
    nginx.close()


def test_a_file_cut_short_below_what_was_read_is_read_from_its_start(tmp_path, reader):
    """Nothing need ever cut it (it takes no room); a file found shorter
    than where the reader was is read again from its first line."""
    nginx = Nginx(str(tmp_path / "reports"))
    reader()
    before = blob_gets("258")
    nginx.write(b"blob GET 258 1\n" * 600)
    wait_until(lambda: blob_gets("258") == before + 600, "the lines were not counted")
    os.truncate(tmp_path / "reports", 0)
    nginx.write(b"blob GET 258 1\n" * 400)  # O_APPEND: from its new end, 0
    wait_until(lambda: blob_gets("258") == before + 1000, "the new lines were not counted")
    wait_until(lambda: os.stat(tmp_path / "reports").st_blocks * 512 <= 4096,
               "what was counted after the cut was not freed")
    nginx.close()


def test_the_registry_makes_the_file_its_groups_when_it_is_first(tmp_path, reader):
    reports = reader()
    wait_until(reports.reading.is_set, "no worker reads the file")
    assert os.stat(tmp_path / "reports").st_mode & 0o777 == 0o660
    nginx = Nginx(str(tmp_path / "reports"))  # nginx opens the same file
    before = blob_gets("256")
    nginx.write(b"blob GET 256 1\n")
    wait_until(lambda: blob_gets("256") == before + 1, "the line was not counted")
    nginx.close()


def test_a_folder_that_is_missing_is_said_and_tried_again(tmp_path, reader, caplog):
    reports = reader(tmp_path / "later" / "reports")
    wait_until(lambda: "cannot make it" in caplog.text, "the missing folder was not said")
    (tmp_path / "later").mkdir()
    wait_until(reports.reading.is_set, "the reader did not begin once the folder was there")
    assert caplog.text.count("cannot make it") == 1


def test_a_reader_stopped_counts_what_is_left(tmp_path):
    """A worker that exits counts the lines it has not yet read."""
    nginx = Nginx(str(tmp_path / "reports"))
    reports = front_file.FileReports(str(tmp_path / "reports"), flush_seconds=30)
    reports.start()
    try:
        wait_until(reports.reading.is_set, "no worker reads the file")
        before = blob_gets("257")
        nginx.write(b"blob GET 257 1\n" * 9)
        time.sleep(0.2)
        assert blob_gets("257") == before  # its next read is 30 s away
    finally:
        reports.stop()
    assert blob_gets("257") == before + 9
    nginx.close()
