"""Headers made fast are tarfile's own, byte for byte: a layer's diff_id
must not depend on which of the two made it."""
import tarfile

import pytest

from builders.layers.tarheader import _by_tarfile, header

NAMES = ["a", "nix/store/abc-pkg", "x" * 98, "x" * 99, "x" * 100, "x" * 101, "y/" * 60,
         "z" * 480, "z" * 4000, "nix/store/ünïcode", "nix/store/bad-\udcff-bytes"]
LINKS = ["", "target", "l" * 99, "l" * 100, "l" * 101, "/nix/store/" + "h" * 200,
         "ünï", "\udcfe"]
TYPES = [(tarfile.DIRTYPE, 0o755, 0), (tarfile.DIRTYPE, 0o1777, 0),
         (tarfile.REGTYPE, 0o444, 0), (tarfile.REGTYPE, 0o755, 1234567),
         (tarfile.REGTYPE, 0o644, 8 ** 11 - 1), (tarfile.REGTYPE, 0o644, 8 ** 11),
         (tarfile.SYMTYPE, 0o777, 0), (tarfile.LNKTYPE, 0o444, 0)]


@pytest.mark.parametrize("type,mode,size", TYPES, ids=lambda v: repr(v))
def test_headers_are_tarfiles_own(type, mode, size):
    for name in NAMES:
        for link in LINKS if type in (tarfile.SYMTYPE, tarfile.LNKTYPE) else [""]:
            for mtime in (1, 0, 8 ** 11 - 1):
                assert (header(name, type, mode, mtime, size, link)
                        == _by_tarfile(name + ("/" if type == tarfile.DIRTYPE
                                               and not name.endswith("/") else ""),
                                       type, mode, mtime, size, link)), (name, link)


def test_pax_record_lengths_at_their_digit_bounds():
    # a record's length counts its own digits: 9 -> 10 and 99 -> 100 and
    # 999 -> 1000 change how many there are
    for n in range(85, 1010):
        name = "n" * n
        assert header(name, tarfile.REGTYPE, 0o644, 1) == _by_tarfile(
            name, tarfile.REGTYPE, 0o644, 1, 0, "")


def test_headers_read_back():
    import io
    data = b"".join([header("nix/store/" + "p" * 150, tarfile.DIRTYPE, 0o555, 1),
                     header("nix/store/" + "p" * 150 + "/f", tarfile.REGTYPE, 0o444, 1, 3),
                     b"abc" + bytes(509),
                     header("nix/store/" + "p" * 150 + "/l", tarfile.SYMTYPE, 0o777, 1,
                            linkname="f" * 300), bytes(1024)])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["nix/store/" + "p" * 150 + s for s in ("", "/f", "/l")]
    assert members[1].size == 3 and members[2].linkname == "f" * 300
