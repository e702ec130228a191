# mod_rsession — the two commands a new user needs: `make demo`, `make test`.
# Everything else (deps, build, install) is reached from those.

SHELL       := /bin/bash
CARGO       ?= cargo
APXS        ?= apxs
MODULE      := target/release/mod_rsession.so
DEMO_PORT   ?= 8080
TEST_THREADS ?= 2
# Debian packages, by who needs them (one list per purpose; add a package
# by adding it to the list of the target that needs it). tools/apt-install.sh
# installs only the missing ones, without recommendations and with service
# starts refused, so no list ever starts a daemon or changes the system
# Apache's configuration (none holds an Apache module that enables itself).
# To build the module:
BUILD_PACKAGES := apache2-dev libclang-dev clang
# To run `make demo` (apache/demo.conf: apache2's own modules, a Python CGI):
DEMO_PACKAGES := apache2 python3
# For `make test`: curl and openssl (tests/hardening.rs), Redis (the tests
# start their own redis-server), PHP through php-fpm (tests/ecosystem.rs
# starts its own master on a private socket), the Prometheus parser
# (tests/observability.rs).
TEST_PACKAGES := apache2 curl openssl python3 \
	redis-server redis-tools \
	php8.2-fpm \
	python3-prometheus-client
# For the browser test of the demo; where they cannot be installed, that
# one test says it was skipped.
BROWSER_PACKAGES := chromium chromium-driver
# The load generator, the peers `make bench` compares against, callgrind.
# libapache2-mod-python enables mod_python in the system Apache when it is
# installed (its own postinst does so): only `make bench` asks for it.
# php8.2-redis is phpredis, for the PHP-FPM peer with Redis sessions: a PHP
# extension only (enabled in PHP's conf.d, nothing in Apache's).
BENCH_PACKAGES := wrk libapache2-mod-python php8.2-redis valgrind strace gcc
# For `make deb` (rustc/cargo come from rustup: Debian's are too old).
DEB_PACKAGES := debhelper dpkg-dev lintian

APT_INSTALL := bash tools/apt-install.sh

.PHONY: build deps demo-deps test-deps browser-deps bench-deps deb-deps \
	demo test bench soak fuzz install uninstall deb deb-test clean lint

build: $(MODULE)

$(MODULE): $(shell find src c_shim -type f) build.rs Cargo.toml
	$(CARGO) build --profile module --lib
	mkdir -p $(dir $(MODULE))
	cp target/module/libmod_rsession.so $(MODULE)

deps:
	@$(APT_INSTALL) $(BUILD_PACKAGES)
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (rustup) first"; exit 1; }
demo-deps: deps
	@$(APT_INSTALL) $(DEMO_PACKAGES)
test-deps: deps
	@$(APT_INSTALL) $(TEST_PACKAGES)
browser-deps:
	@OPTIONAL=1 $(APT_INSTALL) $(BROWSER_PACKAGES)
bench-deps: test-deps
	@$(APT_INSTALL) $(BENCH_PACKAGES)
deb-deps: deps
	@$(APT_INSTALL) $(DEB_PACKAGES)

demo: demo-deps build
	bash apache/demo.sh $(DEMO_PORT)

# Unit tests (host-free code), then integration tests against real httpd
# servers, at most $(TEST_THREADS) at a time.
test: test-deps browser-deps build
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
soak: test-deps bench-deps build
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

# Like `apxs -i`, with the module stripped of its debug information (the
# build keeps line tables for backtraces: ~12 MB, ~1.3 MB without).
LIBEXECDIR = $(shell $(APXS) -q LIBEXECDIR)
SYSCONFDIR = $(shell $(APXS) -q SYSCONFDIR)
install: build
	install -d $(DESTDIR)$(LIBEXECDIR)
	install -m 644 $(MODULE) $(DESTDIR)$(LIBEXECDIR)/mod_rsession.so
	strip --strip-unneeded --remove-section=.comment $(DESTDIR)$(LIBEXECDIR)/mod_rsession.so
	@mods=$(SYSCONFDIR)/mods-available; \
	if [ -d "$$mods" ] || [ -n "$(DESTDIR)" ]; then \
	  install -d $(DESTDIR)$$mods; \
	  install -m 644 apache/rsession.load apache/rsession.conf $(DESTDIR)$$mods/; \
	  echo "installed; enable with: a2enmod rsession && apachectl -k graceful"; \
	fi

# Removes what `make install` put there, disabling the module first (on
# the live system, when it is enabled). Directories are removed only under
# a DESTDIR, and only when empty: system ones stay.
uninstall:
	@if [ -z "$(DESTDIR)" ] && [ -e $(SYSCONFDIR)/mods-enabled/rsession.load ] && command -v a2dismod >/dev/null; then \
	  a2dismod -q rsession && echo "disabled rsession; reload Apache: apachectl -k graceful"; \
	fi
	rm -f $(DESTDIR)$(LIBEXECDIR)/mod_rsession.so \
	  $(DESTDIR)$(SYSCONFDIR)/mods-available/rsession.load \
	  $(DESTDIR)$(SYSCONFDIR)/mods-available/rsession.conf
	@if [ -n "$(DESTDIR)" ]; then \
	  for d in $(LIBEXECDIR) $(SYSCONFDIR)/mods-available; do \
	    while [ "$$d" != / ] && [ "$$d" != . ] && rmdir "$(DESTDIR)$$d" 2>/dev/null; do d=$$(dirname "$$d"); done; \
	  done; \
	fi

# A Debian binary package in target/deb/. The sources are staged into
# target/deb/$(DEB_SRC)/ with the crates of Cargo.lock vendored into its
# vendor/, so that tree is a complete source package that builds offline
# (dpkg-buildpackage there). The unit tests ran in `make test`: the package
# build skips them unless DEB_BUILD_OPTIONS says otherwise.
DEB_VERSION = $(shell dpkg-parsechangelog -l debian/changelog -S Version)
DEB_ARCH = $(shell dpkg --print-architecture)
DEB_SRC = libapache2-mod-rsession-$(DEB_VERSION)
DEB_FILE = target/deb/libapache2-mod-rsession_$(DEB_VERSION)_$(DEB_ARCH).deb
DEB_BUILD_OPTIONS ?= nocheck
deb: deb-deps
	@crate=$$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1); \
	[ "$$crate" = "$(DEB_VERSION)" ] || { echo "debian/changelog says $(DEB_VERSION), Cargo.toml $$crate: add a changelog entry (dch -v $$crate)"; exit 1; }
	@# Fresh mtimes (--touch): the build cache in target/deb/cargo-target must
	@# never take a staged file for older than its last build.
	rm -rf target/deb/$(DEB_SRC)
	mkdir -p target/deb/$(DEB_SRC)
	tar -c --exclude=./target --exclude=./.git --exclude=./fuzz/target --exclude=./vendor . | tar -x --touch -C target/deb/$(DEB_SRC)
	cd target/deb/$(DEB_SRC) && { $(CARGO) vendor --locked --offline --versioned-dirs vendor >/dev/null 2>&1 \
	  || $(CARGO) vendor --locked --versioned-dirs vendor >/dev/null; }
	cd target/deb/$(DEB_SRC) && CARGO_TARGET_DIR=$(abspath target/deb/cargo-target) \
	  DEB_BUILD_OPTIONS="$(DEB_BUILD_OPTIONS)" dpkg-buildpackage -b -us -uc
	@if command -v lintian >/dev/null; then lintian --info $(DEB_FILE) || true; fi
	@echo "built $(DEB_FILE)"

# Installs the package on this machine, enables it, serves a session from
# the system's module set on a private port, then purges it and checks
# that nothing of it is left. Leaves the system Apache as it found it.
deb-test: deb
	bash tools/deb-test.sh $(DEB_FILE)

clean:
	$(CARGO) clean
