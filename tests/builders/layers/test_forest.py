import os

from builders.layers.forest import symlink_tree


def pkg(root, name, files):
    out = root / name
    for rel, content in files.items():
        p = out / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
    return str(out)


def test_top_level_dirs_are_real_and_entries_link_into_the_store(tmp_path):
    a = pkg(tmp_path, "a-hello", {"bin/hello": "", "share/man/man1/hello.1": ""})
    b = pkg(tmp_path, "b-coreutils", {"bin/env": "", "bin/ls": "", "share/man/man1/ls.1": "",
                                      "nix-support/propagated": ""})
    tree = symlink_tree([a, b])
    assert tree["bin"] == ("dir", 0o755)
    assert tree["bin/hello"] == ("symlink", os.path.join(a, "bin/hello"))
    assert tree["bin/ls"] == ("symlink", os.path.join(b, "bin/ls"))
    # a directory both provide is merged, one only one provides is linked
    assert tree["share/man"] == ("dir", 0o755)
    assert tree["share/man/man1/ls.1"] == ("symlink", os.path.join(b, "share/man/man1/ls.1"))
    assert not any(k.startswith("nix-support") for k in tree)
    assert tree["tmp"] == ("dir", 0o1777)
    assert tree["usr/bin/env"] == ("symlink", os.path.join(b, "bin/env"))


def test_file_clash_first_package_wins(tmp_path):
    a = pkg(tmp_path, "a-one", {"bin/tool": "1"})
    b = pkg(tmp_path, "b-two", {"bin/tool": "2"})
    assert symlink_tree([a, b])["bin/tool"] == ("symlink", os.path.join(a, "bin/tool"))


def test_no_env_no_usr_bin_env(tmp_path):
    a = pkg(tmp_path, "a-hello", {"bin/hello": ""})
    assert "usr/bin/env" not in symlink_tree([a])
