"""The first pull a user copies from the documentation works: the commands
of docs/getting-started.md, run as written against a real server on the
offline package set (only its address, and this machine's sandbox options
for running containers, put in), and the image names docs/images.md says
work on that set."""
from __future__ import annotations

import re
import shlex

import pytest
import requests

from tests.conftest import ROOT, need
from tests.e2e.conftest import run

MARK = "<!-- run by tests/e2e/test_docs_pull.py"
# the address the pages use: `make run`'s
PAGE_HOST = "127.0.0.1:8080"
# what running a container needs in this sandbox (as tests/e2e/test_clients.py)
PODMAN_RUN = ["--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit",
              "nproc=1024:1024"]
DOCKER_RUN = ["--network", "none"]


def marked_blocks(name) -> list[list[str]]:
    """The lines of each code block that follows the marker on a page."""
    text = (ROOT / "docs" / name).read_text()
    blocks = re.findall(re.escape(MARK) + r"[^\n]*\n```[a-z]*\n(.*?)\n```", text, re.S)
    return [[line for line in block.splitlines() if line.strip()] for block in blocks]


def commands(block, host):
    """(argv, expected output or None) of each line: what follows `#` on a
    line is what the command prints."""
    for line in block:
        code, _, expected = line.replace(PAGE_HOST, host).partition("#")
        yield shlex.split(code), expected.strip() or None


def the_block(client) -> list[str]:
    found = [b for b in marked_blocks("getting-started.md") if b[0].split()[0] == client]
    assert len(found) == 1, f"getting-started.md has {len(found)} marked blocks for {client}"
    return found[0]


def run_block(client, server, tmp_path, argv_of=lambda argv: argv, env=None):
    for argv, expected in commands(the_block(client), server.host):
        done = run(argv_of(argv), cwd=tmp_path, env=env)
        if expected is not None:
            assert done.stdout.strip() == expected, " ".join(argv)


def test_the_pages_pull_with_skopeo_umoci_and_chroot(server, tmp_path):
    need("skopeo", "umoci", "chroot")
    run_block("skopeo", server, tmp_path)


def test_the_pages_pull_with_podman(server, podman, tmp_path):
    def sandboxed(argv):
        assert argv[0] == "podman"
        if argv[1] == "run":
            return [*podman, "run", *PODMAN_RUN, *argv[2:]]
        return [*podman, *argv[1:]]
    run_block("podman", server, tmp_path, sandboxed)


def test_the_pages_pull_with_docker(server, dockerd, tmp_path):
    def sandboxed(argv):
        assert argv[0] == "docker"
        return ["docker", "run", *DOCKER_RUN, *argv[2:]] if argv[1] == "run" else argv
    run_block("docker", server, tmp_path, sandboxed, env=dockerd.env)


def test_the_pages_pull_with_ctr(server, containerd, tmp_path):
    def sandboxed(argv):
        assert argv[0] == "ctr"
        return ["ctr", "--address", containerd.socket, *argv[1:]]
    run_block("ctr", server, tmp_path, sandboxed)


def test_every_page_block_meant_to_run_is_run():
    clients = sorted(b[0].split()[0] for b in marked_blocks("getting-started.md"))
    assert clients == ["ctr", "docker", "podman", "skopeo"]


@pytest.mark.parametrize("name", [line.strip() for line in marked_blocks("images.md")[0]])
def test_the_names_the_images_page_says_work_do(server, name):
    r = requests.get(f"{server.url}/v2/{name}/manifests/latest", timeout=300)
    assert r.status_code == 200, r.text
