import pytest

from builders.layers.grouping import group, layer_id
from builders.nixbuild.closure import StorePath


def sp(name, size=100, refs=()):
    return StorePath(f"/nix/store/{name}", size, tuple(f"/nix/store/{r}" for r in refs))


def paths(*names):
    return tuple(f"/nix/store/{n}" for n in names)


# Two packages: git needs zlib alone, both need glibc and libshared.
CLOSURE = [
    sp("g0-glibc", 5000),
    sp("z0-zlib", 300, ["g0-glibc"]),
    sp("s0-libshared", 1000, ["g0-glibc"]),
    sp("a0-git", 50, ["z0-zlib", "s0-libshared", "g0-glibc"]),
    sp("h0-htop", 40, ["s0-libshared", "g0-glibc"]),
]


def test_private_dependencies_join_their_package_and_shared_ones_stand_alone():
    groups = group(CLOSURE, 10)
    assert sorted(groups) == sorted([paths("a0-git", "z0-zlib"), paths("g0-glibc"),
                                     paths("h0-htop"), paths("s0-libshared")])


def test_a_popular_path_gets_its_own_layer_even_when_one_package_needs_it():
    git_only = [p for p in CLOSURE if p.path != "/nix/store/h0-htop"]
    assert group(git_only, 10) == [paths("a0-git", "g0-glibc", "s0-libshared", "z0-zlib")]
    groups = group(git_only, 10, {"glibc": 900, "zlib": 500, "git": 3})
    assert sorted(groups) == sorted([paths("g0-glibc"), paths("z0-zlib"),
                                     paths("a0-git", "s0-libshared")])


def test_popular_means_a_share_of_the_most_needed_path():
    git_only = [p for p in CLOSURE if p.path != "/nix/store/h0-htop"]
    # zlib is needed 5 times, but glibc 10000 times: zlib is not popular
    groups = group(git_only, 10, {"glibc": 10000, "zlib": 5})
    assert sorted(groups) == sorted([paths("g0-glibc"), paths("a0-git", "s0-libshared", "z0-zlib")])


def test_layers_come_by_popularity_times_size():
    groups = group(CLOSURE, 10, {"glibc": 100, "libshared": 100, "git": 2, "htop": 2})
    assert groups == [paths("g0-glibc"), paths("s0-libshared"), paths("a0-git", "z0-zlib"),
                      paths("h0-htop")]


def test_budget_holds_for_a_wide_closure_and_merges_the_lowest_rated():
    deps = [sp(f"d{i:03d}-dep{i}", 1000 + i) for i in range(300)]
    tops = [sp(f"t{i:03d}-top{i}", 1, [d.path.split("/")[-1] for d in deps[i::3]])
            for i in range(3)]
    closure = deps + tops
    popularity = {f"dep{i}": 10 for i in range(300)}
    for budget in (1, 2, 5, 99):
        groups = group(closure, budget, popularity)
        assert len(groups) == budget
        flat = [p for g in groups for p in g]
        assert sorted(flat) == sorted(p.path for p in closure)
        assert all(list(g) == sorted(g) for g in groups)
    groups = group(closure, 99, popularity)
    # the 98 largest popular deps keep layers of their own, in rating order
    assert [g[0] for g in groups[:98]] == [d.path for d in reversed(deps)][:98]
    assert len(groups[98]) == len(closure) - 98


def test_grouping_is_deterministic_whatever_the_input_order():
    closure = [sp(f"p{i:02d}-pkg{i}", i % 7, [f"p{(i + 1) % 50:02d}-pkg{(i + 1) % 50}",
                                              f"p{(i * 7) % 50:02d}-pkg{(i * 7) % 50}"])
               for i in range(50)]
    popularity = {f"pkg{i}": i % 5 for i in range(50)}
    roots = ["/nix/store/p00-pkg0", "/nix/store/p13-pkg13"]
    first = group(closure, 10, popularity, roots)
    assert first == group(list(reversed(closure)), 10, dict(reversed(popularity.items())),
                          list(reversed(roots)))
    assert len(first) == 10


def test_roots_are_the_requested_packages():
    # htop asked for along with git: it heads its own layer even though
    # git refers to it
    closure = [sp("h0-htop", 10), sp("a0-git", 10, ["h0-htop"])]
    assert group(closure, 10) == [paths("a0-git", "h0-htop")]
    assert sorted(group(closure, 10, roots=paths("a0-git", "h0-htop"))) == [
        paths("a0-git"), paths("h0-htop")]


def test_a_deep_chain_does_not_exhaust_the_stack():
    chain = [sp(f"c{i:05d}-link{i}", 1, [f"c{i + 1:05d}-link{i + 1}"] if i < 4999 else [])
             for i in range(5000)]
    assert group(chain, 3) == [tuple(sorted(p.path for p in chain))]


def test_layer_id_is_the_set_of_paths():
    assert layer_id(["/nix/store/a", "/nix/store/b"]) == layer_id(["/nix/store/b", "/nix/store/a"])
    assert layer_id(["/nix/store/a"]) != layer_id(["/nix/store/a", "/nix/store/b"])


def test_budget_must_be_positive():
    with pytest.raises(ValueError):
        group([sp("a")], 0)
