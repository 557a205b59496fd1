# The two commands a newcomer needs (README):
#   make run    install what is missing, build, start the whole stack on :7080 (Ctrl-C stops it)
#   make test   install what is missing, build, run every test against real servers
# CI runs `make test SANITIZE=ON BUILD_DIR=build-asan` (AddressSanitizer + UBSan).

BUILD_DIR ?= build
SANITIZE ?= OFF
BUILD_TYPE ?= RelWithDebInfo

.PHONY: all bootstrap build web run test unit integration k8s bench clean fuzz-smoke soak tsan tsan-unit faults attack-replay image-check

all: build web

# The image's build stage sets BOOTSTRAP="scripts/bootstrap --build-only" (scripts/image-steps).
BOOTSTRAP ?= scripts/bootstrap

bootstrap:
	@$(BOOTSTRAP)

build: bootstrap
	@cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) \
		-DCHATWEB_SANITIZE=$(SANITIZE) > $(BUILD_DIR).cmake.log 2>&1 || \
		{ cat $(BUILD_DIR).cmake.log; exit 1; }
	@cmake --build $(BUILD_DIR)

# The web UI (web/, docs/web.md): npm ci from the lock file, then Vite builds web/dist, which
# `make run` serves at / and /admin/ (and scripts/image-steps copies into the image when it is
# there), with a .gz copy of each text file for nginx's gzip_static (web/precompress.mjs). Rebuilt
# only when a source file changed. Not part of `build`: the image's build stage runs `make build`
# with no node.
WEB_SOURCES := $(wildcard web/src/* web/index.html web/admin/index.html) web/vite.config.js web/precompress.mjs

web: web/dist/.built

web/node_modules/.installed: web/package.json web/package-lock.json | bootstrap
	cd web && npm ci --no-audit --no-fund --loglevel=error
	touch $@

web/dist/.built: web/node_modules/.installed $(WEB_SOURCES)
	cd web && node_modules/.bin/vite build --logLevel warn && node precompress.mjs
	touch $@

run: build web
	@BUILD_DIR=$(BUILD_DIR) node deploy/local/run.mjs

# C unit tests get a private MariaDB (TEST_MYSQL_DSN), Redis (REDIS_URL), and a Redis Cluster and
# Sentinel set (TEST_REDIS_CLUSTER_URL, TEST_REDIS_SENTINEL_URL: test_redis_ha) from with-servers;
# the integration tests start their own servers. checksrc (banned calls, third-party headers, the
# shapes of svc/*.h: docs/decisions.md 44) runs first, after its self-test proves each check fails;
# then checkcalls (no circle of calls between a service's files, read from the object files).
unit: build
	scripts/checksrc --self-test >/dev/null || scripts/checksrc --self-test
	scripts/checksrc
	scripts/checkcalls --self-test
	scripts/checkcalls $(BUILD_DIR)
	scripts/with-servers --redis --redis-ha --mariadb -- ctest --test-dir $(BUILD_DIR) --output-on-failure

NPM_STAMP := $(if $(wildcard tests/package.json),tests/node_modules/.installed)

integration: build web $(NPM_STAMP)
	BUILD_DIR=$(BUILD_DIR) node --test --test-concurrency=1 tests/integration/*.test.mjs

# Offline Kubernetes checks (tests/k8s, docs/deploy.md): the image recipe against
# scripts/image-steps, helm lint and helm template of deploy/k8s/chatweb validated against the
# Kubernetes 1.27 schemas, and the Ingress routes against deploy/local/nginx.conf.tmpl.
k8s: build $(NPM_STAMP)
	BUILD_DIR=$(BUILD_DIR) node --test --test-concurrency=1 tests/k8s/*.test.mjs

test: unit integration k8s

# The image built in a real Docker engine and run as the chart runs it (scripts/image-check,
# docs/deploy.md): root on Debian 12; installs docker.io and debootstrap when missing, starts its
# own dockerd and makes debian:12-slim offline when needed, builds a clean clone of HEAD (plus
# web/dist when built) and prints `N passed, M failed`. NO_CACHE=1 builds cold. Not in `make test`
# nor in CI (.ci/run): about 5 minutes on a fresh machine, against CI's 30-minute budget.
image-check:
	scripts/image-check $(if $(NO_CACHE),--no-cache)

# npm packages the integration tests use (tests/package.json, locked by package-lock.json).
tests/node_modules/.installed: tests/package.json tests/package-lock.json
	cd tests && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Every libFuzzer target (tests/fuzz/corpus/<name> -> fuzz_<name>) built with clang and run for
# FUZZ_SECONDS each; fails on any finding (tests/fuzz/README.md).
FUZZ_BUILD_DIR ?= build-fuzz
FUZZ_SECONDS ?= 20
FUZZ_TARGETS := $(patsubst tests/fuzz/corpus/%,fuzz_%,$(wildcard tests/fuzz/corpus/*))

fuzz-smoke: bootstrap
	@cmake -S . -B $(FUZZ_BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
		-DCMAKE_C_COMPILER=clang -DCHATWEB_FUZZ=ON > $(FUZZ_BUILD_DIR).cmake.log 2>&1 || \
		{ cat $(FUZZ_BUILD_DIR).cmake.log; exit 1; }
	@cmake --build $(FUZZ_BUILD_DIR) --target $(FUZZ_TARGETS)
	tests/fuzz/smoke $(FUZZ_BUILD_DIR) $(FUZZ_SECONDS)

# The soak (tests/soak/run.mjs): SOAK_SECONDS of mixed chat and ops traffic against a whole stack,
# RSS and descriptors of every service sampled and bounded. SOAK_NO_BUILD=1 uses BUILD_DIR as it is
# (CI soaks its ASan and TSan builds that way). SOAK_SANITIZER=asan|tsan names such a build.
SOAK_SECONDS ?= 1800

soak: $(if $(SOAK_NO_BUILD),,build) $(NPM_STAMP)
	BUILD_DIR=$(BUILD_DIR) SOAK_SECONDS=$(SOAK_SECONDS) node tests/soak/run.mjs

# Dependency faults under load (tests/faults/run.mjs): Redis and MariaDB stopped and restarted, the
# upstream refusing, stalling, cutting and answering garbage; prints what users saw, the recovery
# times and whether money and events are consistent. FAULT_SECONDS (8) per fault.
faults: build $(NPM_STAMP)
	BUILD_DIR=$(BUILD_DIR) node tests/faults/run.mjs

# The attacks of issue 10 against a running `make run` (docs/security.md): make attack-replay
# [DATA_DIR=var] [OPS_KEY=<its operator key>, else DATA_DIR/first-run.json's]. Prints what each attack got; exit 1 if one got through.
# Its last attack (guessing OPS_KEY) throttles this address's operator calls for 10 minutes.
attack-replay: $(NPM_STAMP)
	node tests/attack/replay.mjs $(if $(DATA_DIR),--data-dir $(DATA_DIR))

# A ThreadSanitizer build (CHATWEB_TSAN; cannot be combined with ASan) of everything: the service
# binaries (CI soaks them) and the C unit tests and fuzz replays, which `make tsan-unit` runs.
TSAN_BUILD_DIR ?= build-tsan

tsan: bootstrap
	@cmake -S . -B $(TSAN_BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCHATWEB_TSAN=ON \
		> $(TSAN_BUILD_DIR).cmake.log 2>&1 || { cat $(TSAN_BUILD_DIR).cmake.log; exit 1; }
	@cmake --build $(TSAN_BUILD_DIR)

# The ctest tests of `make unit` on the ThreadSanitizer build, with the same servers; any report
# fails its test (halt_on_error; TSan's exit code 66). Left out, and only these:
#  - test_tokenizer.test_megabyte_runs: 14 MiB of single-threaded BPE, 9 s in the plain build and
#    past its 120 s timeout under TSan; one thread, nothing for TSan to see (the tokenizer's shared
#    tables are read by the file's other cases, which run).
TSAN_UNIT_EXCLUDE := ^test_tokenizer[.]test_megabyte_runs$$

tsan-unit: tsan
	TSAN_OPTIONS="$${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}" \
		scripts/with-servers --redis --redis-ha --mariadb -- \
		ctest --test-dir $(TSAN_BUILD_DIR) --output-on-failure -E '$(TSAN_UNIT_EXCLUDE)'

bench: build
	BUILD_DIR=$(BUILD_DIR) bench/run-all

clean:
	rm -rf $(BUILD_DIR) $(BUILD_DIR).cmake.log web/dist
