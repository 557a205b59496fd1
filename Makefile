# The two commands a newcomer needs (README):
#   make run    install what is missing, build, start the whole stack on :7080 (Ctrl-C stops it)
#   make test   install what is missing, build, run every test against real servers
# CI runs `make test SANITIZE=ON BUILD_DIR=build-asan` (AddressSanitizer + UBSan).

BUILD_DIR ?= build
SANITIZE ?= OFF
BUILD_TYPE ?= RelWithDebInfo

.PHONY: all bootstrap build run test unit integration bench clean fuzz-smoke soak tsan faults

all: build

bootstrap:
	@scripts/bootstrap

build: bootstrap
	@cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) \
		-DCHATWEB_SANITIZE=$(SANITIZE) > $(BUILD_DIR).cmake.log 2>&1 || \
		{ cat $(BUILD_DIR).cmake.log; exit 1; }
	@cmake --build $(BUILD_DIR)

run: build
	@BUILD_DIR=$(BUILD_DIR) node deploy/local/run.mjs

# C unit tests get a private MariaDB (TEST_MYSQL_DSN), Redis (REDIS_URL), and a Redis Cluster and
# Sentinel set (TEST_REDIS_CLUSTER_URL, TEST_REDIS_SENTINEL_URL: test_redis_ha) from with-servers;
# the integration tests start their own servers.
unit: build
	scripts/checksrc
	scripts/with-servers --redis --redis-ha --mariadb -- ctest --test-dir $(BUILD_DIR) --output-on-failure

NPM_STAMP := $(if $(wildcard tests/package.json),tests/node_modules/.installed)

integration: build $(NPM_STAMP)
	BUILD_DIR=$(BUILD_DIR) node --test --test-concurrency=1 tests/integration/*.test.mjs

test: unit integration

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

# A ThreadSanitizer build of the service binaries (CHATWEB_TSAN; cannot be combined with ASan).
TSAN_BUILD_DIR ?= build-tsan

tsan: bootstrap
	@cmake -S . -B $(TSAN_BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCHATWEB_TSAN=ON \
		> $(TSAN_BUILD_DIR).cmake.log 2>&1 || { cat $(TSAN_BUILD_DIR).cmake.log; exit 1; }
	@cmake --build $(TSAN_BUILD_DIR) --target chatweb-auth chatweb-billing chatweb-chat \
		chatweb-proxy chatweb-fake-upstream

bench: build
	BUILD_DIR=$(BUILD_DIR) bench/run-all

clean:
	rm -rf $(BUILD_DIR) $(BUILD_DIR).cmake.log
