#!/usr/bin/env bash
# `make test-cluster`: the 3-broker tests (tests/kafka_cluster.rs: the broker leading the
# hot partition is killed with kill -9 mid-load). Starts a 3-broker KRaft cluster and a
# PostgreSQL of its own, on OTHER ports than `make test`'s single broker (each port
# + 1000: brokers 20092/20102/20112, controllers 20093/..., Postgres 16432 with the
# defaults) and in its own state dir (.services-cluster/, .services-cluster.env), runs
# only `cargo test --workspace --test kafka_cluster`, and always stops the services
# again (deleting their data). About 1 min to start the cluster, ~2 min of test.
# Usage: ops/test-cluster.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flashsale-target}"
bash ops/ensure-tools.sh
export FLASHSALE_KAFKA_BROKERS=3
export FLASHSALE_KAFKA_PORT=$((${FLASHSALE_KAFKA_PORT:-19092} + 1000))
export FLASHSALE_KAFKA_CONTROLLER_PORT=$((${FLASHSALE_KAFKA_CONTROLLER_PORT:-19093} + 1000))
export FLASHSALE_PG_PORT=$((${FLASHSALE_PG_PORT:-15432} + 1000))
export FLASHSALE_SERVICES_DIR="$PWD/.services-cluster"
# the test restarts the killed broker with ops/kafka/start.sh, which updates this file
export FLASHSALE_SERVICES_ENV="$PWD/.services-cluster.env"
trap 'bash ops/services-down.sh || true' EXIT
bash ops/services-up.sh
set -a
# shellcheck disable=SC1091
. "$FLASHSALE_SERVICES_ENV"
set +a
# The cluster test fails instead of skipping when the cluster is missing.
export FLASHSALE_REQUIRE_CLUSTER=1 FLASHSALE_REQUIRE_SERVICES=1
cargo build --bin flashsale
cargo test --workspace --test kafka_cluster "$@"
