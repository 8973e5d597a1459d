#!/usr/bin/env bash
# `make test`: install what is missing, start real Kafka + Postgres on 127.0.0.1,
# build the `flashsale` binary (the crash tests run it as a child process), run every
# test of the workspace, then check the HTTP contract with Schemathesis against
# `serve --demo` (ops/contract.sh), and always stop the services again.
# Usage: ops/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flashsale-target}"
bash ops/ensure-tools.sh
# The engine core stays free of I/O crates (fails fast, before any service starts).
bash ops/check-purity.sh
trap 'bash ops/services-down.sh || true' EXIT
bash ops/services-up.sh
set -a
# shellcheck disable=SC1091
. ./.services.env
set +a
# Tests that need Kafka or Postgres fail instead of skipping when these are missing.
export FLASHSALE_REQUIRE_SERVICES=1
# Latency-driven admission off in the servers the tests start as child processes (a
# loaded test machine must not shed a test's requests); tests/admission.rs sets the
# flags itself to test it, and the defaults are the product's (docs/overload.md).
export FLASHSALE_ADMISSION_MAX_WAIT_MS=0 FLASHSALE_ADMISSION_TARGET_MS=0 FLASHSALE_ADMISSION_MAX_LAG_MS=0
cargo build --bin flashsale
cargo test --workspace --no-fail-fast "$@"
# The HTTP contract (schemas/openapi.yaml), checked against the server by Schemathesis.
bash ops/contract.sh
