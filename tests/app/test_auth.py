"""Who may pull: Basic credentials against an htpasswd file, and a user
named by a trusted proxy; on every path but the probes."""
import base64
import logging
import os

import bcrypt
import pytest

from app import auth, create_app
from app.config import Config, ConfigError
from tests.conftest import PKGS


def entry(user, password, rounds=4):
    # `htpasswd -B` writes the $2y$ variant
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()
    return f"{user}:{hashed.replace('$2b$', '$2y$', 1)}\n"


def basic(user, password):
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def htpasswd(tmp_path):
    path = tmp_path / "htpasswd"
    path.write_text(entry("alice", "wonderland") + entry("bob", "builder"))
    return path


@pytest.fixture
def locked(tmp_path, htpasswd):
    return create_app(Config(pkgs_path=str(PKGS), storage_path=str(tmp_path / "s"),
                             htpasswd=str(htpasswd), tls_in_front=True))


@pytest.mark.parametrize("method,path", [
    ("GET", "/v2/"), ("HEAD", "/v2/hello/manifests/latest"), ("GET", "/v2/hello/tags/list"),
    ("GET", "/v2/hello/blobs/sha256:" + "0" * 64), ("GET", "/"), ("GET", "/metrics"),
    ("GET", "/builds/hello:latest"), ("GET", "/v2/hello/referrers/sha256:" + "0" * 64),
])
def test_every_path_asks_for_credentials(locked, method, path):
    r = locked.test_client().open(path, method=method)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Basic realm="registry", charset="UTF-8"'
    if method == "GET":
        error = r.get_json()["errors"][0]
        assert error["code"] == "UNAUTHORIZED" and "log in" in error["message"]
    if path.startswith("/v2"):
        assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_failures_are_listed_to_signed_in_users_only(locked):
    client = locked.test_client()
    assert client.get("/v2/broken/manifests/latest", headers=basic("alice", "wonderland")
                      ).status_code == 422
    for path in ("/", "/builds/broken:latest"):
        anonymous = client.get(path)
        assert anonymous.status_code == 401 and b"broken" not in anonymous.data
        signed_in = client.get(path, headers=basic("bob", "builder")).get_data(as_text=True)
        assert "package broken failed to build" in signed_in


def test_the_probes_stay_open(locked):
    client = locked.test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_right_wrong_and_unknown(locked):
    client = locked.test_client()
    assert client.get("/v2/", headers=basic("alice", "wonderland")).status_code == 200
    assert client.get("/v2/hello/manifests/latest",
                      headers=basic("bob", "builder")).status_code == 200
    for headers in (basic("alice", "nope"), basic("mallory", "wonderland"),
                    basic("alice", "w" * 100),  # past bcrypt's 72 bytes: refused, no error
                    {"Authorization": "Basic !!!not-base64"},
                    {"Authorization": "Bearer abc"}):
        r = client.get("/v2/", headers=headers)
        assert r.status_code == 401, headers
        assert r.get_json()["errors"][0]["code"] == "UNAUTHORIZED"
    metrics = client.get("/metrics", headers=basic("alice", "wonderland")).get_data(as_text=True)
    assert 'registry_refusals_total{reason="auth"}' in metrics
    assert "alice" not in metrics  # no user names as labels


def test_an_unknown_user_costs_a_check_as_a_known_one_does(htpasswd, monkeypatch):
    seen = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda pw, h: seen.append(h) or real(pw, h))
    users = auth.Htpasswd(str(htpasswd))
    assert not users.verify("mallory", "wonderland")
    assert seen == [auth._DUMMY]


def test_checks_are_remembered_until_the_file_changes(htpasswd, monkeypatch):
    now = [0.0]
    checks = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda pw, h: checks.append(1) or real(pw, h))
    authn = auth.Authenticator(htpasswd=auth.Htpasswd(str(htpasswd), clock=lambda: now[0]))
    environ = {"HTTP_AUTHORIZATION": basic("alice", "wonderland")["Authorization"],
               "REMOTE_ADDR": "10.0.0.1"}
    for _ in range(20):  # a pull is dozens of requests
        assert authn.user_of(environ) == "alice"
    assert len(checks) == 1
    # a new password: the old one is refused once the file is looked at again
    htpasswd.write_text(entry("alice", "looking-glass"))
    os.utime(htpasswd, ns=(1, 10**9 * 12345))
    now[0] += 1.5
    with pytest.raises(auth.Unauthorized):
        authn.user_of(environ)
    environ["HTTP_AUTHORIZATION"] = basic("alice", "looking-glass")["Authorization"]
    assert authn.user_of(environ) == "alice"


def _login(user, password, address):
    return {"HTTP_AUTHORIZATION": basic(user, password)["Authorization"], "REMOTE_ADDR": address}


@pytest.fixture
def counted(htpasswd, monkeypatch):
    """An authenticator on a clock of its own, and the bcrypt checks it makes."""
    now = [100.0]
    checks = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda pw, h: checks.append(1) or real(pw, h))
    authn = auth.Authenticator(htpasswd=auth.Htpasswd(str(htpasswd)), clock=lambda: now[0])
    return authn, checks, now


def test_repeated_failures_of_a_user_are_refused_without_a_check(counted):
    authn, checks, now = counted
    for _ in range(auth.FAIL_LIMIT):
        with pytest.raises(auth.Unauthorized, match="wrong user name or password"):
            authn.user_of(_login("alice", "guess", "10.0.0.9"))
    with pytest.raises(auth.TooManyRequests, match="too many failed logins as 'alice' from "
                                                   "10.0.0.9: try again in 61s") as e:
        authn.user_of(_login("alice", "wonderland", "10.0.0.9"))
    assert e.value.headers["Retry-After"] == "61" and len(checks) == auth.FAIL_LIMIT
    # alice from another client, and bob from the same one, are not held up
    assert authn.user_of(_login("alice", "wonderland", "10.0.0.10")) == "alice"
    assert authn.user_of(_login("bob", "builder", "10.0.0.9")) == "bob"
    # and alice is let in again once the failures are old
    now[0] += auth.FAIL_WINDOW + 1
    assert authn.user_of(_login("alice", "wonderland", "10.0.0.9")) == "alice"


def test_bcrypt_work_stays_bounded_per_client_whatever_the_names(counted):
    authn, checks, now = counted
    assert authn.user_of(_login("bob", "builder", "2001:db8:1:2::1")) == "bob"
    checks.clear()
    for i in range(auth.CLIENT_FAIL_LIMIT):
        with pytest.raises(auth.Unauthorized):
            authn.user_of(_login(f"user{i}", "guess", "2001:db8:1:2::1"))
    # any name now, from anywhere in the client's /64, is refused unchecked
    for user, password in (("alice", "wonderland"), ("mallory", "guess")):
        with pytest.raises(auth.TooManyRequests, match="too many failed logins from "
                                                       "2001:db8:1:2::99"):
            authn.user_of(_login(user, password, "2001:db8:1:2::99"))
    assert len(checks) == auth.CLIENT_FAIL_LIMIT
    # a login remembered from before still passes, as it costs no check
    assert authn.user_of(_login("bob", "builder", "2001:db8:1:2::99")) == "bob"
    # and other clients are not held up
    assert authn.user_of(_login("alice", "wonderland", "2001:db8:1:3::1")) == "alice"


def test_no_credentials_is_asked_to_log_in_not_told_they_are_wrong(counted):
    authn, checks, now = counted
    for environ in ({"REMOTE_ADDR": "10.0.0.9"},
                    {"HTTP_AUTHORIZATION": "", "REMOTE_ADDR": "10.0.0.9"},
                    _login("", "", "10.0.0.9")):  # what `curl -u :` sends
        for _ in range(auth.FAIL_LIMIT + 1):
            with pytest.raises(auth.Unauthorized) as e:
                authn.user_of(environ)
            assert e.value.message.startswith("authentication required: log in")
            assert "WWW-Authenticate" in e.value.headers
    assert checks == []  # no check, and no failure counted: not refused later either
    with pytest.raises(auth.Unauthorized, match="wrong user name or password"):
        authn.user_of(_login("alice", "guess", "10.0.0.9"))


def test_only_bcrypt_entries_are_accepted(tmp_path):
    path = tmp_path / "htpasswd"
    path.write_text("alice:$apr1$abcdefgh$0123456789abcdefghijkl\n")
    with pytest.raises(ValueError, match="line 1: not a bcrypt entry"):
        auth.Htpasswd(str(path))


def test_a_proxys_user_header_is_believed_only_from_its_addresses(tmp_path):
    app = create_app(Config(pkgs_path=str(PKGS), storage_path=str(tmp_path / "s"),
                            user_header="X-Forwarded-User", user_header_peers="127.0.0.0/8,::1"))
    client = app.test_client()
    assert client.get("/v2/", headers={"X-Forwarded-User": "carol"}).status_code == 200
    # X-Forwarded-For rewrites the client's address, not the peer's
    assert client.get("/v2/", headers={"X-Forwarded-User": "carol",
                                       "X-Forwarded-For": "203.0.113.7"}).status_code == 200
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "198.51.100.2"
    assert other.get("/v2/", headers={"X-Forwarded-User": "carol"}).status_code == 401
    assert other.get("/v2/", headers={"X-Forwarded-User": "carol",
                                      "X-Forwarded-For": "127.0.0.1"}).status_code == 401
    assert client.get("/v2/").status_code == 401  # no header: no user


def test_configuration_refuses_any_peer_and_half_settings(tmp_path):
    with pytest.raises(ConfigError, match="`\\*` would let any client in as the proxy"):
        Config(storage_path=str(tmp_path), user_header="X-User", user_header_peers="*")
    with pytest.raises(ConfigError, match="go together"):
        Config(storage_path=str(tmp_path), user_header="X-User")
    with pytest.raises(ConfigError, match="is not a file"):
        Config(storage_path=str(tmp_path), htpasswd=str(tmp_path / "none"))


def test_a_warning_when_nothing_says_tls_is_in_front(tmp_path, htpasswd, caplog):
    with caplog.at_level(logging.WARNING, logger="app.auth"):
        create_app(Config(pkgs_path=str(PKGS), storage_path=str(tmp_path / "s"),
                          htpasswd=str(htpasswd)))
    assert "credentials travel in clear" in caplog.text and "NIXERY_TLS_IN_FRONT" in caplog.text


def test_a_file_broken_while_serving_keeps_the_users_read_before(htpasswd):
    now = [0.0]
    users = auth.Htpasswd(str(htpasswd), clock=lambda: now[0])
    htpasswd.write_text("alice:not-bcrypt\n")
    now[0] += 2
    assert users.verify("alice", "wonderland")  # still the old entry
    htpasswd.unlink()
    now[0] += 2
    assert users.verify("bob", "builder")
