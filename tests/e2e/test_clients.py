"""Real clients pull images from a real server and run what they pulled."""
from __future__ import annotations

import json
import os
import shutil
import stat

from builders.sources.folder import tree_hash
from tests.conftest import PKGS, need
from tests.e2e.conftest import run

CHROOT_ENV = {"PATH": "/bin:/usr/bin"}


def skopeo_copy(server, name, dest, tag="latest", check=True):
    need("skopeo")
    return run(["skopeo", "copy", "--src-tls-verify=false",
                f"docker://{server.host}/{name}:{tag}", f"oci:{dest}:{tag}"], check=check)


def unpack(layout, bundle, tag="latest"):
    need("umoci")
    run(["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)])
    return bundle / "rootfs"


def in_root(rootfs, *cmd):
    """Run a program of the unpacked image inside it, with the image's PATH."""
    need("chroot")
    return run([shutil.which("chroot"), rootfs, *cmd], env=CHROOT_ENV).stdout


def test_skopeo_umoci_chroot_runs_hello_and_shell(server, tmp_path):
    skopeo_copy(server, "shell/hello", tmp_path / "oci")
    rootfs = unpack(tmp_path / "oci", tmp_path / "bundle")

    assert in_root(rootfs, "hello") == "Hello, world!\n"
    listing = in_root(rootfs, "bash", "-c", "ls /bin && echo via-bash").split()
    assert {"hello", "bash", "ls", "cat", "sponge", "nano"} <= set(listing)
    assert listing[-1] == "via-bash"
    assert in_root(rootfs, "/usr/bin/env", "echo", "env-works") == "env-works\n"
    assert stat.S_IMODE(os.stat(rootfs / "tmp").st_mode) == 0o1777
    assert os.readlink(rootfs / "bin" / "hello").startswith("/nix/store/")
    assert (rootfs / "etc" / "protocols").exists()

    process = json.loads((tmp_path / "bundle" / "config.json").read_text())["process"]
    assert process["args"] == ["bash"]
    env = dict(e.split("=", 1) for e in process["env"])
    assert "/bin" in env["PATH"].split(":")
    assert env["SSL_CERT_FILE"].endswith("/etc/ssl/certs/ca-bundle.crt")
    assert (rootfs / env["SSL_CERT_FILE"].lstrip("/")).read_text() == "# test CA bundle\n"


def test_nested_attribute_and_file_types(server, tmp_path):
    skopeo_copy(server, "langpackages.foo/filetypes", tmp_path / "oci")
    rootfs = unpack(tmp_path / "oci", tmp_path / "bundle")
    assert in_root(rootfs, "foo") == "foo from langPackages\n"
    share = rootfs / os.readlink(rootfs / "share" / "filetypes").lstrip("/")
    assert (share / "file").read_text() == "data\n"
    assert os.stat(share / "hardlink").st_ino == os.stat(share / "file").st_ino
    assert os.readlink(share / "symlink") == "file"
    assert stat.S_IMODE(os.stat(share / "sub" / "readonly").st_mode) == 0o444


def test_podman_pulls_and_runs(server, podman):
    image = f"{server.host}/shell/hello:latest"
    run(podman + ["pull", "--tls-verify=false", image])
    out = run(podman + ["run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024",
                        "--ulimit", "nproc=1024:1024", image, "hello"]).stdout
    assert out == "Hello, world!\n"


def test_containerd_pulls_and_runs(server, containerd):
    ctr = ["ctr", "--address", containerd.socket]
    image = f"{server.host}/shell/hello:latest"
    run(ctr + ["images", "pull", "--plain-http", image])
    out = run(ctr + ["run", "--rm", image, "e2e-hello", "hello"]).stdout
    assert out.strip() == "Hello, world!"


def test_docker_pulls_and_runs(server, dockerd):
    image = f"{server.host}/shell/hello:latest"
    run(["docker", "pull", image], env=dockerd.env)
    out = run(["docker", "run", "--rm", "--network", "none", image, "hello"],
              env=dockerd.env).stdout
    assert out == "Hello, world!\n"
    # Cmd is bash: the image runs a shell with no command given
    out = run(["docker", "run", "--rm", "-i", "--network", "none", image],
              input="echo from-default-cmd\n", env=dockerd.env).stdout
    assert out == "from-default-cmd\n"


def test_docker_reports_missing_packages(server, dockerd):
    done = run(["docker", "pull", f"{server.host}/hello/nopkg/gti:latest"], check=False,
               env=dockerd.env)
    print("docker:", done.stderr)  # what docs/clients.md quotes
    assert done.returncode != 0
    assert "nopkg" in done.stderr and "did you mean git" in done.stderr


def test_skopeo_inspect_and_list_tags(server):
    """What people run first: inspect (which lists the tags too) and list-tags."""
    need("skopeo")
    done = run(["skopeo", "inspect", "--tls-verify=false", f"docker://{server.host}/shell/hello"])
    info = json.loads(done.stdout)
    # the folder's revision that images were built from is a tag too
    revision = tree_hash(str(PKGS))[:12]
    assert "latest" in info["RepoTags"] and set(info["RepoTags"]) <= {"latest", revision}
    assert info["Architecture"] == "amd64"
    assert info["Name"] == f"{server.host}/shell/hello"
    done = run(["skopeo", "list-tags", "--tls-verify=false", f"docker://{server.host}/hello"])
    assert json.loads(done.stdout)["Tags"] == sorted(["latest", revision])
    # and pulls the images built from it
    pinned = run(["skopeo", "inspect", "--tls-verify=false",
                  f"docker://{server.host}/shell/hello:{revision}"])
    assert json.loads(pinned.stdout)["Digest"] == info["Digest"]


def test_the_home_pages_commands_work_pasted_as_they_are(server, podman, dockerd, tmp_path):
    import html
    import re
    import shlex

    import requests
    page = requests.get(server.url + "/", timeout=60).text
    pre = re.search(r'<pre id="pull">(.*?)</pre>', page, re.S).group(1)
    lines = {line.split()[0]: shlex.split(html.unescape(line)) for line in pre.splitlines()}
    assert lines["podman"][2] == "--tls-verify=false"  # this page was read over plain HTTP
    run(lines["skopeo"], cwd=tmp_path)
    assert (tmp_path / "out" / "index.json").exists()
    # the sandbox's own options for podman and docker, then the command as pasted
    run([*podman, *lines["podman"][1:]])
    run(lines["docker"], env=dockerd.env)
