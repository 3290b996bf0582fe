"""A build and a collection of the Nix store at once (nix-collect-garbage on
a timer, or Nix's own when space runs short): what the build made stays
until its layers are stored, and derivations deleted between their
evaluation and their build are evaluated again.  Against a store of the
test's own (tests/nixstore.py), collected at the moment that matters."""
from __future__ import annotations

import os

import pytest

from app import create_app
from app.config import Config
from builders.errors import BuildFailed
from builders.image.names import Image
from builders.nixbuild.nix import Nix
from tests.conftest import PKGS


class CollectingNix(Nix):
    """The registry's Nix, with the whole store collected once, just before
    its first call of `before` (a method's name)."""

    def __init__(self, store, before, **kwargs):
        super().__init__(**kwargs)
        self.store = store
        self.before = before
        self.collected = None

    def _collect(self, method):
        if method == self.before and self.collected is None:
            self.collected = self.store.collect()

    def realise(self, outputs, deadline, roots=None):
        self._collect("realise")
        return super().realise(outputs, deadline, roots)

    def closure(self, paths, deadline):
        self._collect("closure")
        return super().closure(paths, deadline)


@pytest.fixture
def config(tmp_path):
    return Config(pkgs_path=str(PKGS), storage_path=str(tmp_path / "storage"), nix_timeout=120)


def images(config, nix):
    return create_app(config, nix=nix).extensions["images"]


def test_the_app_roots_builds_in_its_state(config):
    assert images(config, None).nix.roots_path == config.gc_roots_path
    assert config.gc_roots_path.startswith(config.state_path + os.sep)


def test_what_a_build_made_stays_through_a_collection_until_its_layers_are_stored(
        tmp_path, config, nix_store):
    dead = nix_store.add(tmp_path, "dead", "nothing roots this\n")
    nix = CollectingNix(nix_store, "closure", roots_path=config.gc_roots_path)

    record = images(config, nix).image(Image.from_name("hello"), "latest")

    # the collection ran between the build and the layers, and collected
    assert dead in nix.collected and not nix_store.valid(dead)
    hello = next(p for p in os.listdir(nix_store.dir) if p.endswith("-hello-1.0"))
    assert record.layers and any(layer["paths"] for layer in record.layers)
    # nothing is rooted once the layers are stored: the next collection
    # takes what the build made
    assert os.listdir(config.gc_roots_path) == []
    assert nix_store.valid(os.path.join(nix_store.dir, hello))
    nix_store.collect()
    assert not nix_store.valid(os.path.join(nix_store.dir, hello))


def test_without_roots_that_collection_deletes_the_build_under_it(config, nix_store):
    nix = CollectingNix(nix_store, "closure", roots_path=None)
    with pytest.raises(BuildFailed, match="could not read the closure"):
        images(config, nix).image(Image.from_name("hello"), "latest")
    assert "-hello-1.0" in nix.collected


def test_derivations_collected_before_their_build_are_evaluated_again(config, nix_store, caplog):
    nix = CollectingNix(nix_store, "realise", roots_path=config.gc_roots_path)

    record = images(config, nix).image(Image.from_name("hello"), "latest")

    assert "-hello-1.0.drv" in nix.collected
    assert record.layers
    assert "evaluating again" in caplog.text
