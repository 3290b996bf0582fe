import http.server
import json
import threading

import pytest

from builders.layers import popularity
from builders.layers.popularity import Popularity, PopularityError
from storage import FilesystemStorage, keys


@pytest.fixture
def store(tmp_path):
    return FilesystemStorage(tmp_path / "storage")


@pytest.fixture
def http_popularity():
    """A real HTTP server on 127.0.0.1 serving popularity JSON; counts requests."""
    state = {"body": b"{}", "requests": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            state["requests"] += 1
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(state["body"])))
            self.end_headers()
            self.wfile.write(state["body"])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}/popularity.json"
    yield state
    server.shutdown()
    server.server_close()


def counts(pop, names=()):
    return pop.for_layering(names)[0]


def test_counts_from_a_url_are_fetched_once(store, http_popularity):
    http_popularity["body"] = json.dumps({"glibc-2.37": 900, "zlib-1.3": 40}).encode()
    pop = Popularity(store, http_popularity["url"])
    for _ in range(3):
        assert counts(pop, ["hello-1.0"]) == {"glibc-2.37": 900, "zlib-1.3": 40}
    assert http_popularity["requests"] == 1


def test_counts_from_a_file_url(store, tmp_path):
    path = tmp_path / "popularity.json"
    path.write_text('{"openssl-3.0": 12}')
    assert counts(Popularity(store, path.as_uri())) == {"openssl-3.0": 12}


def test_derived_counts_are_stored_and_count_the_image_being_built(store):
    pop = Popularity(store)
    assert counts(pop, ["a", "b"]) == {"a": 1, "b": 1}
    pop.record(["a", "b", "b"])
    pop.record(["b", "c"])
    # another process (or a restart) reads the same counts
    assert Popularity(store).derived() == {"a": 1, "b": 2, "c": 1}
    assert counts(Popularity(store), ["c", "d"]) == {"a": 1, "b": 2, "c": 2, "d": 1}
    assert json.loads(store.read(keys.popularity()))["counts"] == {"a": 1, "b": 2, "c": 1}


def test_an_unreachable_url_falls_back_to_derived_counts_and_is_retried(store, tmp_path):
    now = [1000.0]
    path = tmp_path / "later.json"
    pop = Popularity(store, path.as_uri(), clock=lambda: now[0])
    Popularity(store).record(["x"])
    assert counts(pop, ["y"]) == {"x": 1, "y": 1}
    path.write_text('{"x": 5}')
    assert counts(pop) == {"x": 1}  # not asked again straight away
    now[0] += popularity.RETRY_AFTER
    assert counts(pop) == {"x": 5}


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"a": "many"}', b'{"a": true}'])
def test_malformed_popularity_data_is_refused(body):
    with pytest.raises(PopularityError):
        popularity.parse(body)


def test_malformed_data_at_the_url_falls_back(store, http_popularity):
    http_popularity["body"] = b"<html>not here</html>"
    assert counts(Popularity(store, http_popularity["url"]), ["a"]) == {"a": 1}


def test_counted_over_images_two_is_popular_however_many_images_came(store):
    pop = Popularity(store)
    for _ in range(500):
        pop.record(["busybox"])  # one path every image needs
    counts, threshold = pop.for_layering(["libfoo"])
    assert threshold == 2 and counts["busybox"] == 500 and counts["libfoo"] == 1


def test_over_a_package_set_popular_is_a_share_of_the_top(store, tmp_path):
    path = tmp_path / "popularity.json"
    path.write_text('{"glibc-2.37": 50000, "zlib-1.3": 8000, "libfoo-1": 3}')
    _, threshold = Popularity(store, path.as_uri()).for_layering()
    assert threshold == 500
