#!/usr/bin/env bash
# The HTTP contract, checked by a real tool: Schemathesis runs every operation of
# schemas/openapi.yaml against `flashsale serve --demo` (embedded mode, an admin
# token, its own temporary data directory, a free loopback port), with every check
# (`--checks all`) and every phase (examples, coverage, fuzzing, stateful: the
# stateful phase follows the OpenAPI links, e.g. a created reservation into its
# read, extend, cancel and checkout), then stops the server. Exits non-zero on any
# failure Schemathesis reports, or when the server cannot be started. `make test`
# runs it after the cargo tests (ops/test.sh).
#
# Usage: ops/contract.sh [--max-examples N] [--seed N|random] [--timeout-secs S] [--report DIR]
#   --max-examples N  test cases per operation and phase (default 40; more finds more
#                     and takes longer)
#   --seed N|random   Hypothesis seed (default 27, so `make test` is repeatable;
#                     `random` explores further, and the run prints the seed to replay)
#   --timeout-secs S  stop the run, and fail, after S seconds (default 600)
#   --report DIR      also write Schemathesis' JUnit and NDJSON reports to DIR
#
# Needs: the debug binary ($CARGO_TARGET_DIR/debug/flashsale, built by ops/test.sh;
# FLASHSALE_BIN overrides it) and Schemathesis in ~/.cache/flashsale/venv (installed,
# pinned, by ops/ensure-tools.sh; FLASHSALE_VENV overrides the venv).
# Settings the schema cannot say (which 400s are the server's rules between fields,
# how long to read the endless event stream) are in ops/contract.toml, each explained.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=ops/lib.sh
. ops/lib.sh

SCHEMATHESIS_VERSION=4.32.5
max_examples=40
timeout_secs=600
seed=27
report=""
while (($#)); do
	case $1 in
	-h | --help)
		usage_from_header "${BASH_SOURCE[0]}"
		exit 0
		;;
	--max-examples) max_examples=${2:?--max-examples needs a number} && shift 2 ;;
	--timeout-secs) timeout_secs=${2:?--timeout-secs needs a number} && shift 2 ;;
	--seed) seed=${2:?--seed needs a number} && shift 2 ;;
	--report) report=${2:?--report needs a directory} && shift 2 ;;
	*) die "unknown argument: $1 (see --help)" ;;
	esac
done

target=${CARGO_TARGET_DIR:-$HOME/.cache/flashsale-target}
bin=${FLASHSALE_BIN:-$target/debug/flashsale}
venv=${FLASHSALE_VENV:-$HOME/.cache/flashsale/venv}
st=$venv/bin/schemathesis
[[ -x $bin ]] || die "no flashsale binary at $bin: run 'cargo build --bin flashsale' (or set FLASHSALE_BIN)"
[[ -x $st ]] || die "no Schemathesis at $st: run ops/ensure-tools.sh"
have=$("$st" --version 2>/dev/null | awk '{print $NF}')
[[ $have == "$SCHEMATHESIS_VERSION" ]] ||
	die "Schemathesis $have at $st, this script is pinned to $SCHEMATHESIS_VERSION: run ops/ensure-tools.sh"

work=$(mktemp -d "${TMPDIR:-/tmp}/flashsale-contract.XXXXXX")
server_pid=""
cleanup() {
	if [[ -n $server_pid ]] && pid_alive "$server_pid"; then
		kill -TERM "$server_pid" 2>/dev/null || true
		wait_until 20 "the server to stop" bash -c "! kill -0 $server_pid 2>/dev/null" ||
			kill -KILL "$server_pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

token="contract-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
# Port 0: the server picks a free port and prints it (no race for a port). --embedded:
# make test exports the services' FLASHSALE_KAFKA, which would start Kafka mode.
"$bin" serve --embedded --demo --admin-token "$token" --listen 127.0.0.1:0 \
	--data-dir "$work/data" >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
addr_of() { sed -n 's|^flashsale listening on \(http://[^ ]*\).*|\1|p' "$work/server.out"; }
if ! wait_until 60 "the server to print its address" bash -c "[[ -n \$(sed -n 's|^flashsale listening on ||p' '$work/server.out') ]] || ! kill -0 $server_pid"; then
	cat "$work/server.err" >&2
	die "the server did not start"
fi
base=$(addr_of)
[[ -n $base ]] || {
	cat "$work/server.err" >&2
	die "the server exited before listening"
}
ready() { [[ $(curl -s -o /dev/null -w '%{http_code}' "$base/ready") == 200 ]]; }
products() { curl -s "$base/api/v1/products" | grep -q IPHONE15-256GB; }
wait_until 60 "$base/ready" ready || die "the server is not ready"
wait_until 60 "the demo sale" products || die "the demo sale was not created"
log "server $base (pid $server_pid, data $work/data); Schemathesis $have, $max_examples examples per operation, seed $seed"

args=(
	run schemas/openapi.yaml
	--url "$base"
	--checks all
	--phases examples,coverage,fuzzing,stateful
	--max-examples "$max_examples"
	--header "Authorization: Bearer $token"
	--request-timeout 10
	--workers 1
)
[[ $seed == random ]] || args+=(--seed "$seed")
if [[ -n $report ]]; then
	mkdir -p "$report"
	args+=(--report junit,ndjson --report-dir "$report")
fi
status=0
# Bounded: --max-examples bounds the work; this bounds the time whatever happens.
timeout --kill-after=10 "$timeout_secs" \
	"$st" --config-file ops/contract.toml --no-color "${args[@]}" || status=$?
if ! pid_alive "$server_pid"; then
	warn "the server died during the run; its log:"
	tail -50 "$work/server.err" >&2
	status=1
fi
if ((status != 0)); then
	warn "Schemathesis reported failures (exit $status); the server's last log lines:"
	tail -20 "$work/server.err" >&2
	exit 1
fi
log "the server keeps its contract"
