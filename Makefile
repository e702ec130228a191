# mod_rsession — the two commands a new user needs: `make demo`, `make test`.
# Everything else (deps, build, install) is reached from those.

SHELL       := /bin/bash
CARGO       ?= cargo
APXS        ?= apxs
MODULE      := target/release/mod_rsession.so
DEMO_PORT   ?= 8080
TEST_THREADS ?= 2
# Debian packages needed to build, test and run (checked one by one, so a
# machine that has them all runs no apt-get at all).
DEB_PACKAGES := apache2 apache2-dev libclang-dev clang curl openssl python3 redis-server wrk libapache2-mod-php
# For the browser test of the demo; where they cannot be installed, that
# one test says it was skipped.
BROWSER_PACKAGES := chromium chromium-driver
# The peers `make bench` compares against, and callgrind.
BENCH_PACKAGES := libapache2-mod-python valgrind strace gcc

.PHONY: build deps bench-deps browser-deps demo test bench soak fuzz install clean lint

build: $(MODULE)

$(MODULE): $(shell find src c_shim -type f) build.rs Cargo.toml
	$(CARGO) build --release --lib
	cp target/release/libmod_rsession.so $(MODULE)

deps: PACKAGES = $(DEB_PACKAGES)
bench-deps: PACKAGES = $(DEB_PACKAGES) $(BENCH_PACKAGES)
deps bench-deps:
	@missing=""; for p in $(PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" -ne 0 ]; then echo "run as root (or: sudo apt-get install$$missing)"; exit 1; fi; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (rustup) first"; exit 1; }

browser-deps:
	@missing=""; for p in $(BROWSER_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" -eq 0 ]; then \
	  echo "installing (optional):$$missing"; \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing) \
	    || echo "note: could not install$$missing; the browser test will be skipped"; \
	fi

demo: deps build
	bash apache/demo.sh $(DEMO_PORT)

# Unit tests (host-free code), then integration tests against real httpd
# servers, at most $(TEST_THREADS) at a time.
test: deps browser-deps build
	$(CARGO) test --release --lib
	RSESSION_MODULE=$(abspath $(MODULE)) $(CARGO) test --release --test '*' -- --test-threads=$(TEST_THREADS)

# Side-by-side throughput, a sweep of 1,000,000 expired sessions and
# instructions per request; prints Markdown (see BENCHMARKS.md).
bench: bench-deps build
	python3 bench/bench.py $(BENCH_ARGS)

# A bounded soak, SOAK_SECONDS in all (split between the file store and
# Redis): mixed traffic through graceful restarts and killed children;
# prints requests, errors, lost updates, RSS slope and descriptors, and
# fails when a goal is missed (see BENCHMARKS.md). Not part of `make test`.
SOAK_SECONDS ?= 600
soak: deps build
	SOAK_SECONDS=$(SOAK_SECONDS) python3 bench/soak.py

# Each fuzz target for FUZZ_SECONDS (default 60), from the committed seed
# corpus; new inputs go to target/fuzz-corpus, crashes to fuzz/artifacts.
# A crash found is minimised into fuzz/corpus/<target>/ by hand, where
# `cargo test` replays it from then on (src/fuzzing.rs).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := cookie update record directive
fuzz: deps
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p target/fuzz-corpus/$$t; \
	  echo "== fuzz $$t for $(FUZZ_SECONDS)s"; \
	  (cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --sanitizer none $$t \
	     ../target/fuzz-corpus/$$t corpus/$$t -- -max_total_time=$(FUZZ_SECONDS)) || exit 1; \
	done

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings

install: build
	install -d $(DESTDIR)$$($(APXS) -q LIBEXECDIR)
	install -m 644 $(MODULE) $(DESTDIR)$$($(APXS) -q LIBEXECDIR)/mod_rsession.so
	@mods=$$($(APXS) -q SYSCONFDIR)/mods-available; \
	if [ -d "$$mods" ] || [ -n "$(DESTDIR)" ]; then \
	  install -d $(DESTDIR)$$mods; \
	  install -m 644 apache/rsession.load apache/rsession.conf $(DESTDIR)$$mods/; \
	  echo "installed; enable with: a2enmod rsession && apachectl -k graceful"; \
	fi

clean:
	$(CARGO) clean
