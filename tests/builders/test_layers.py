import pytest

from builders.layers import group, layer_id
from builders.nix import StorePath


def sp(name, size=100, refs=()):
    return StorePath(f"/nix/store/{name}", size, tuple(f"/nix/store/{r}" for r in refs))


def test_small_closure_gets_a_layer_per_path():
    closure = [sp("a-libc", 1000), sp("b-app", 10, ["a-libc"])]
    groups = group(closure, 10)
    assert sorted(groups) == [("/nix/store/a-libc",), ("/nix/store/b-app",)]
    # the most referenced path comes first
    assert groups[0] == ("/nix/store/a-libc",)


def test_budget_holds_for_a_wide_closure():
    deps = [sp(f"dep{i:03d}", i) for i in range(300)]
    closure = deps + [sp("root", 1, [d.path.split("/")[-1] for d in deps])]
    groups = group(closure, 99)
    assert len(groups) == 99
    flat = [p for g in groups for p in g]
    assert sorted(flat) == sorted(p.path for p in closure)
    assert len(flat) == len(set(flat))


def test_grouping_is_deterministic_whatever_the_input_order():
    closure = [sp(f"p{i}", i % 7, [f"p{(i + 1) % 50}"]) for i in range(50)]
    assert group(closure, 10) == group(list(reversed(closure)), 10)


def test_layer_id_is_the_set_of_paths():
    assert layer_id(["/nix/store/a", "/nix/store/b"]) == layer_id(["/nix/store/b", "/nix/store/a"])
    assert layer_id(["/nix/store/a"]) != layer_id(["/nix/store/a", "/nix/store/b"])


def test_budget_must_be_positive():
    with pytest.raises(ValueError):
        group([sp("a")], 0)
