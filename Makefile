# flashsale — the two commands that matter: `make run` and `make test`.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/flashsale-target

.PHONY: run test simulate test-cluster build fmt fmt-check clippy bench bench-compare bench-crowd bench-soak bench-plan services-up services-down help

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

run: ## the embedded server with a demo sale on http://127.0.0.1:8080 (flags of serve: ARGS='--admin-token s3cret')
	cargo run --release --bin flashsale -- serve --demo $(ARGS)

test: ## the whole suite: installs what is missing, starts Kafka + Postgres, tests, stops them
	bash ops/test.sh

simulate: ## the Kafka host's seeded cluster simulation over more seeds: make simulate SEEDS=1000000 [FROM=0]
	FLASHSALE_SIM_SEEDS=$(or $(SEEDS),100000) FLASHSALE_SIM_FROM=$(or $(FROM),0) cargo test -p flashsale-engine --lib kafka::sim -- --nocapture

test-cluster: ## the 3-broker test (broker leader killed mid-load) on its own cluster and ports; stops it after
	bash ops/test-cluster.sh

build: ## debug build of everything
	cargo build --workspace --all-targets

fmt: ## format the code
	cargo fmt --all

fmt-check:
	cargo fmt --all -- --check

clippy: ## lint, warnings are errors
	cargo clippy --workspace --all-targets -- -D warnings

bench: ## engine core micro-benchmarks (criterion)
	cargo bench -p flashsale-core

bench-compare: ## flashsale vs the Postgres and Redis baselines, one scenario, one run
	bash benches/scripts/bench-compare.sh

bench-crowd: ## the 10:00 crowd (flash, big, find-max, 2x overload), embedded and Kafka side by side; needs services-up
	bash benches/scripts/crowd.sh

bench-plan: ## the capacity plan checked: profile, plan --machines 1 --cores-per-machine 1 vs a pinned find-max, both modes (ARGS='--profile p.json --rounds 3')
	bash benches/scripts/plan-check.sh $(ARGS)

bench-soak: ## the 30-minute soak, per-minute report and flatness verdict: make bench-soak MODE=embedded|kafka DURATION=30m [SCALE=0.25]
	SCALE=$(SCALE) bash benches/scripts/soak.sh $(or $(MODE),embedded) $(or $(DURATION),30m)

services-up: ## start Kafka + Postgres on 127.0.0.1, write .services.env (FLASHSALE_KAFKA_BROKERS=3: a 3-broker cluster)
	bash ops/services-up.sh

services-down: ## stop them and delete their data (every topic, the database) and .services.env
	bash ops/services-down.sh
