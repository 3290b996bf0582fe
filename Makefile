# The two commands of the README: `make run` serves the registry,
# `make test` runs the tests.  Both install what a fresh Debian machine lacks.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# What serving needs: Nix (with its build users), git for git sources and
# the static busybox the test package set is built from.
RUN_DEBS := nix-bin nix-setup-systemd git ca-certificates busybox-static
# What the end-to-end tests drive (nginx: deploy/nginx.conf in front;
# apache2-utils: htpasswd, as docs/security.md makes the users' file with it;
# mmdebstrap: the base of the registry's image; systemd: systemd-analyze
# and systemd-sysusers check deploy/systemd/; openssh-server: a Nix remote
# builder on loopback, tests/nixstore.py).
TEST_DEBS := skopeo umoci podman runc containerd docker.io uidmap chromium chromium-driver nginx \
	apache2-utils mmdebstrap systemd openssh-server openssh-client
# What the benchmarks measure against and load with (bench/, by hand only).
BENCH_DEBS := wrk nginx docker-registry skopeo gcc

LISTEN_ADDRESS ?= 127.0.0.1
export LISTEN_ADDRESS

.PHONY: run test test-unit test-e2e docs bench deps test-deps bench-deps clean wheelhouse image

# the installed operator command, as a deployment runs it
run: deps $(VENV)/.installed
	$(BIN)/nix-image-registry serve

test: deps test-deps $(VENV)/.installed
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: deps $(VENV)/.installed
	$(BIN)/pytest -m 'not e2e' $(PYTEST_ARGS)

test-e2e: deps test-deps $(VENV)/.installed
	$(BIN)/pytest -m e2e $(PYTEST_ARGS)

# The documentation site (docs/, mkdocs.yml) in site/, built strictly: a
# broken link, a missing anchor or a page left out of the navigation fails
# it.  MkDocs and its theme come with the test extras; the site loads
# nothing from the network.  (NO_MKDOCS_2_WARNING: the theme's notice
# about MkDocs' future, printed on every build.)
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# Not part of `make test`: minutes long, and its figures depend on the
# machine.  Runs every benchmark with a target, then fails if any missed it.
bench: deps bench-deps $(VENV)/.installed
	$(BIN)/python -m bench.serve $(SERVE_ARGS); s=$$?; \
	$(BIN)/python -m bench.load $(LOAD_ARGS); l=$$?; \
	$(BIN)/python -m bench.pulls $(PULLS_ARGS); p=$$?; \
	NIX_CONFIG='substituters =' $(BIN)/python -m bench.coldpull $(COLDPULL_ARGS); c=$$?; \
	$(BIN)/python -m bench.throughput $(THROUGHPUT_ARGS); t=$$?; \
	exit $$((s || l || p || c || t))

# The registry's wheel and a wheel of everything it needs, in
# dist/wheelhouse: what `pip install --no-index --find-links` takes offline.
wheelhouse: $(VENV)/.installed
	rm -rf dist/wheelhouse build
	$(BIN)/pip wheel --quiet --wheel-dir dist/wheelhouse .
	rm -rf build

# The registry's container image, nix-image-registry:latest (deploy/Containerfile),
# built with podman (docker where podman is missing) and no image registry:
# scripts/build-image says how.
image: wheelhouse
	@command -v podman >/dev/null || command -v docker >/dev/null || ./scripts/apt-install podman
	@./scripts/apt-install mmdebstrap
	./scripts/build-image

deps:
	@./scripts/apt-install $(RUN_DEBS)

test-deps:
	@./scripts/apt-install $(TEST_DEBS)

bench-deps:
	@./scripts/apt-install $(BENCH_DEBS)

$(VENV)/.installed: setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV) || { $(SUDO) apt-get install -y python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) var .pytest_cache dist build site
