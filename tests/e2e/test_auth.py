"""Pull authentication with the clients people use: each logs in the way
it always does and pulls, and each is refused, saying so, without
credentials or with a wrong password, for images built already too."""
from __future__ import annotations


import pytest

from tests.conftest import need
from tests.e2e.conftest import registry, run

IMAGE = "shell/hello"


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    need("htpasswd")
    users = tmp_path_factory.mktemp("users") / "htpasswd"
    # as docs/security.md says to make it
    run(["htpasswd", "-B", "-b", "-c", str(users), "alice", "wonderland"])
    yield from registry(tmp_path_factory, "registry-auth", NIXERY_HTPASSWD=str(users),
                        NIXERY_TLS_IN_FRONT="1")


def test_skopeo_with_and_without_credentials(locked, tmp_path):
    need("skopeo")
    ref = f"docker://{locked.host}/{IMAGE}:latest"
    # the first pull builds it; the refusals below are of a built image
    run(["skopeo", "copy", "--src-tls-verify=false", "--src-creds", "alice:wonderland", ref,
         f"oci:{tmp_path / 'oci'}:latest"])
    for creds in ([], ["--creds", "alice:guess"], ["--creds", "mallory:wonderland"]):
        done = run(["skopeo", "inspect", "--tls-verify=false", *creds, ref], check=False)
        assert done.returncode != 0
        assert "unauthorized" in done.stderr.lower() or "authentication required" in \
            done.stderr.lower(), done.stderr
    authfile = tmp_path / "auth.json"
    run(["skopeo", "login", "--tls-verify=false", "--authfile", str(authfile), "-u", "alice",
         "-p", "wonderland", locked.host])
    run(["skopeo", "inspect", "--tls-verify=false", "--authfile", str(authfile), ref])
    # the user is in the access log, the password nowhere
    log = locked.read_log()
    assert " alice \"GET /v2/shell/hello/manifests/latest\" 200 " in log
    assert "wonderland" not in log


def test_docker_logs_in_and_pulls(locked, dockerd, tmp_path):
    env = dict(dockerd.env, DOCKER_CONFIG=str(tmp_path / "docker-config"))
    image = f"{locked.host}/{IMAGE}:latest"
    refused = run(["docker", "pull", image], check=False, env=env)
    assert refused.returncode != 0 and "no basic auth credentials" in refused.stderr, \
        refused.stderr
    wrong = run(["docker", "login", locked.host, "-u", "alice", "--password-stdin"],
                input="guess", check=False, env=env)
    assert wrong.returncode != 0 and "unauthorized" in wrong.stderr.lower(), wrong.stderr
    run(["docker", "login", locked.host, "-u", "alice", "--password-stdin"],
        input="wonderland", env=env)
    run(["docker", "pull", image], env=env)
    out = run(["docker", "run", "--rm", "--network", "none", image, "hello"], env=env).stdout
    assert out == "Hello, world!\n"


def test_podman_logs_in_and_pulls(locked, podman, tmp_path):
    authfile = str(tmp_path / "auth.json")
    with open(authfile, "w") as f:
        f.write("{}")  # no credentials yet
    image = f"{locked.host}/{IMAGE}:latest"
    refused = run(podman + ["pull", "--tls-verify=false", "--authfile", authfile, image],
                  check=False)
    assert refused.returncode != 0 and "unauthorized" in refused.stderr.lower(), refused.stderr
    wrong = run(podman + ["login", "--tls-verify=false", "--authfile", authfile, "-u", "alice",
                          "-p", "guess", locked.host], check=False)
    assert wrong.returncode != 0
    run(podman + ["login", "--tls-verify=false", "--authfile", authfile, "-u", "alice",
                  "-p", "wonderland", locked.host])
    run(podman + ["pull", "--tls-verify=false", "--authfile", authfile, image])


def test_ctr_pulls_with_its_user_flag(locked, containerd):
    ctr = ["ctr", "--address", containerd.socket]
    image = f"{locked.host}/{IMAGE}:latest"
    refused = run(ctr + ["images", "pull", "--plain-http", image], check=False)
    assert refused.returncode != 0 and "401" in refused.stderr, refused.stderr
    wrong = run(ctr + ["images", "pull", "--plain-http", "--user", "alice:guess", image],
                check=False)
    assert wrong.returncode != 0 and "401" in wrong.stderr
    run(ctr + ["images", "pull", "--plain-http", "--user", "alice:wonderland", image])
    out = run(ctr + ["run", "--rm", image, "e2e-auth-hello", "hello"]).stdout
    assert out.strip() == "Hello, world!"


@pytest.fixture(scope="module")
def quoted(tmp_path_factory):
    """Two users, each allowed one build at a time and two an hour."""
    from tests.conftest import drowsy_set
    need("htpasswd")
    work = tmp_path_factory.mktemp("quota")
    users = work / "htpasswd"
    run(["htpasswd", "-B", "-b", "-c", str(users), "alice", "wonderland"])
    run(["htpasswd", "-B", "-b", str(users), "bob", "builder"])
    yield from registry(tmp_path_factory, "registry-quota", NIXERY_HTPASSWD=str(users),
                        NIXERY_TLS_IN_FRONT="1", NIXERY_CLIENT_BUILDS="2,1",
                        NIXERY_PKGS_PATH=drowsy_set(work / "pkgs", 6), NIXERY_PULL_WAIT="1")


def test_a_client_over_its_build_quota_is_told_while_others_build_and_pull(quoted):
    import requests
    # (plain HTTP: containers/image honours Retry-After and retries for
    # minutes, which is right for it and long for a test)
    alice, bob = ("alice", "wonderland"), ("bob", "builder")
    url = f"{quoted.url}/v2/{{}}/manifests/latest"
    assert requests.get(url.format("hello"), auth=alice).status_code == 200  # built; cached
    # alice's long build runs; she may start no other one meanwhile
    assert requests.get(url.format("drowsy"), auth=alice).status_code == 429  # still building
    over = requests.get(url.format("curl"), auth=alice)
    assert over.status_code == 429 and over.headers["Retry-After"]
    error = over.json()["errors"][0]
    assert error["code"] == "TOOMANYREQUESTS"
    assert "user alice already started 1 build that is not done" in error["message"]
    assert error["detail"]["setting"] == "NIXERY_CLIENT_BUILDS"
    # meanwhile bob's new image builds, and a built image pulls for alice
    assert requests.get(url.format("htop"), auth=bob).status_code == 200
    assert requests.get(url.format("hello"), auth=alice).status_code == 200
    # bob joining alice's build is not a build of his
    assert requests.get(url.format("drowsy"), auth=bob).status_code in (200, 429)
    metrics = requests.get(f"{quoted.url}/metrics", auth=bob).text
    assert 'registry_refusals_total{reason="quota"}' in metrics
