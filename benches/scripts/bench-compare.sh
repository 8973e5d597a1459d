#!/usr/bin/env bash
# benches/scripts/bench-compare.sh - flashsale against the designs it replaces, side by side,
# in one run on this machine (what `make bench-compare` runs).
#
# Usage: benches/scripts/bench-compare.sh [--quick] [--help]
#
# Targets, each started here on 127.0.0.1 and stopped after its runs:
#   flashsale-kafka     flashsale serve --kafka --postgres (only when .services.env gives
#                       FLASHSALE_KAFKA and the binary accepts --kafka; else "skipped: ...")
#   flashsale-embedded  flashsale serve (embedded mode, throwaway data dir)
#   baseline-postgres   the seed's design (needs Postgres: FLASHSALE_POSTGRES, else
#                       ops/postgres/start.sh is tried)
#   baseline-redis      one Lua script per reservation (Redis from ops/redis/start.sh)
# Per target: the scenario run (benches/scenarios/flash-crowd.toml: one hot SKU, 10 reads
# per write, a flash crowd at the start), with the read ceiling (/health vs availability),
# then --find-max on benches/scenarios/capacity.toml (sustained hot-SKU writes/s within
# the p99 SLO, no reads). Then `flashsale-bench compare` prints the ratio table,
# relative to flashsale in Kafka mode (embedded when Kafka is skipped).
#
# Writes to the results dir: <target>.json/.html (scenario), <target>-max.json/.html
# (find-max), compare.json/.html/.txt, and each server's log.
# Builds the binaries in release mode first, with CARGO_TARGET_DIR (default
# ~/.cache/flashsale-target). The runs take about 4 minutes on 2 cores (--quick: about 1),
# plus the build.
#
# Environment (defaults in brackets):
#   FLASHSALE_BENCH_RESULTS   results dir [target/bench-results/<UTC time>]
#   FLASHSALE_BENCH_SLO_P99_MS  p99 SLO of --find-max [50]
#   FLASHSALE_BIN             use this flashsale binary instead of building it [release build]
#   FLASHSALE_KAFKA, FLASHSALE_POSTGRES   as written by ops/services-up.sh to .services.env
# Kafka mode runs on topics prefixed fsbench<time>. and a database of the same name
# (dropped at the end; the topics stay in the throwaway broker).
# Exit status: 0 clean, 1 when any run found correctness violations, 2 when a run or the
# set-up failed (targets skipped for want of a service do not count).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck disable=SC2034 # read by lib.sh
OPS_NAME=bench-compare
# shellcheck source-path=SCRIPTDIR source=../../ops/lib.sh
. "$REPO/ops/lib.sh"

# Set-up failures exit 2, so that 1 keeps meaning "correctness violations".
fail() {
	printf '[%s] ERROR: %s\n' "$OPS_NAME" "$*" >&2
	exit 2
}

quick=0
for arg in "$@"; do
	case $arg in
	-h | --help)
		usage_from_header "${BASH_SOURCE[0]}"
		exit 0
		;;
	--quick) quick=1 ;;
	*) die "unknown argument: $arg (see --help)" ;;
	esac
done

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/flashsale-target}
# The services' addresses are read, not exported: `flashsale serve` takes FLASHSALE_KAFKA
# from the environment, and the embedded target must not run in Kafka mode.
if [[ -f $REPO/.services.env ]]; then
	# shellcheck disable=SC1091
	. "$REPO/.services.env"
fi
kafka=${FLASHSALE_KAFKA:-}
postgres=${FLASHSALE_POSTGRES:-}
unset FLASHSALE_KAFKA FLASHSALE_POSTGRES

results=$(abs_path "${FLASHSALE_BENCH_RESULTS:-$REPO/target/bench-results/$(date -u +%Y%m%dT%H%M%SZ)}")
mkdir -p "$results"
slo=${FLASHSALE_BENCH_SLO_P99_MS:-50}
token=bench-$(od -An -tx8 -N8 /dev/urandom | tr -d ' \n')

bin=$CARGO_TARGET_DIR/release
BENCH=$bin/flashsale-bench
if [[ -n ${FLASHSALE_BIN:-} ]]; then
	FLASHSALE=$(abs_path "$FLASHSALE_BIN")
	packages=(-p flashsale-bench)
else
	FLASHSALE=$bin/flashsale
	packages=(-p flashsale-bench -p flashsale-gateway)
fi
log "building release binaries (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
(cd "$REPO" && cargo build --release "${packages[@]}" --bins) >&2 ||
	fail "cargo build failed"
for b in "$BENCH" "$FLASHSALE" "$bin/baseline-postgres" "$bin/baseline-redis"; do
	[[ -x $b ]] || fail "missing binary $b"
done

# Scenario and find-max knobs; --quick shortens everything for a smoke run.
scenario=(--scenario "$REPO/benches/scenarios/flash-crowd.toml")
capacity=(--scenario "$REPO/benches/scenarios/capacity.toml" --find-max --slo-p99-ms "$slo"
	--find-max-start 200 --find-max-factor 1.6)
if ((quick)); then
	scenario+=(--duration-secs 3 --warmup-secs 1 --read-ceiling-secs 1)
	capacity+=(--find-max-step-secs 1.5 --find-max-steps 3 --find-max-refine 0 --warmup-secs 1)
else
	scenario+=(--read-ceiling-secs 2)
	capacity+=(--find-max-step-secs 3 --find-max-steps 10 --find-max-refine 1)
fi
common=(--admin-token "$token" --progress plain)

# --- processes this script starts (only these are ever stopped) ---
server_pid=""
started_redis=0
started_postgres=0
bench_db=""
cleanup() {
	if [[ -n $server_pid ]]; then
		kill_bounded "$server_pid" 15 "server" || true
		server_pid=""
	fi
	if [[ -n $bench_db ]]; then
		psql "$postgres" -qc "DROP DATABASE IF EXISTS $bench_db WITH (FORCE)" >&2 || true
	fi
	if ((started_redis)); then
		"$REPO/ops/redis/stop.sh" >&2 || true
	fi
	if ((started_postgres)); then
		"$REPO/ops/postgres/stop.sh" >&2 || true
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

next_port=18181
free_port() {
	while port_open "$next_port"; do
		next_port=$((next_port + 1))
	done
	echo "$next_port"
	next_port=$((next_port + 1))
}

http_ok() { [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$1$2") == 200 ]]; }

# start_server NAME PORT READY_PATH CMD...: runs CMD in the background, logs to the
# results dir, waits for READY_PATH to answer 200 (flashsale: /ready, once its partitions
# are recovered; the baselines: /health). Returns 1 (and leaves nothing running) when it
# does not come up.
start_server() {
	local name=$1 port=$2 ready=$3
	shift 3
	"$@" >"$results/$name.server.log" 2>&1 &
	server_pid=$!
	if ! wait_until 60 "$name $ready on port $port" http_ok "$port" "$ready"; then
		kill_bounded "$server_pid" 10 "$name" || true
		server_pid=""
		tail -n 20 "$results/$name.server.log" >&2 || true
		return 1
	fi
	log "$name up on 127.0.0.1:$port (pid $server_pid)"
}

stop_server() {
	if [[ -n $server_pid ]]; then
		kill_bounded "$server_pid" 15 "server" || true
		server_pid=""
	fi
}

violations=0
failed=0
inputs=()
skipped=()
# bench NAME PORT: the scenario run and the find-max against the server on PORT.
bench() {
	local name=$1 port=$2 rc
	log "== $name: scenario run"
	rc=0
	"$BENCH" --target "http://127.0.0.1:$port" --label "$name" "${common[@]}" "${scenario[@]}" \
		--json-out "$results/$name.json" --html-out "$results/$name.html" || rc=$?
	case $rc in
	0) ;;
	1) violations=1 ;;
	*)
		warn "$name: scenario run failed (exit $rc)"
		skipped+=("$name: failed: scenario run exited $rc (see the log above)")
		failed=1
		return 0
		;;
	esac
	inputs+=("$name=$results/$name.json")
	log "== $name: find-max (p99 ≤ $slo ms)"
	rc=0
	"$BENCH" --target "http://127.0.0.1:$port" --label "$name" "${common[@]}" "${capacity[@]}" \
		--json-out "$results/$name-max.json" --html-out "$results/$name-max.html" || rc=$?
	case $rc in
	0) inputs+=("$name=$results/$name-max.json") ;;
	1)
		violations=1
		inputs+=("$name=$results/$name-max.json")
		;;
	*)
		warn "$name: find-max failed (exit $rc)"
		skipped+=("$name: failed: find-max exited $rc (see the log above)")
		failed=1
		;;
	esac
}

# --- flashsale on Kafka + Postgres ---
# Isolated from whatever else uses the same broker and database: topics under a prefix of
# this run, its own engine consumer group, and a database of its own (dropped after).
serve_help=$("$FLASHSALE" serve --help 2>/dev/null || true)
if [[ -z $kafka ]]; then
	skipped+=("flashsale-kafka: skipped: no FLASHSALE_KAFKA in .services.env (run make services-up)")
elif ! grep -q -- '--kafka' <<<"$serve_help"; then
	skipped+=("flashsale-kafka: skipped: this flashsale binary has no --kafka flag")
elif [[ -z $postgres ]]; then
	skipped+=("flashsale-kafka: skipped: no FLASHSALE_POSTGRES in .services.env")
else
	tag=fsbench$(date -u +%Y%m%d%H%M%S)
	kafka_pg=$postgres
	if command -v psql >/dev/null && psql "$postgres" -v ON_ERROR_STOP=1 -qc "CREATE DATABASE $tag" >&2; then
		bench_db=$tag
		kafka_pg=${postgres%/*}/$tag
	else
		warn "could not create database $tag: flashsale-kafka shares $postgres"
	fi
	isolation=()
	if grep -q -- '--topic-prefix' <<<"$serve_help"; then isolation+=(--topic-prefix "$tag."); fi
	if grep -q -- '--engine-group' <<<"$serve_help"; then isolation+=(--engine-group "$tag"); fi
	port=$(free_port)
	if ! "$FLASHSALE" migrate --postgres "$kafka_pg" --log warn >"$results/flashsale-kafka.migrate.log" 2>&1; then
		skipped+=("flashsale-kafka: failed: flashsale migrate failed (see $results/flashsale-kafka.migrate.log)")
		failed=1
	elif start_server flashsale-kafka "$port" /ready "$FLASHSALE" serve --listen "127.0.0.1:$port" \
		--admin-token "$token" --data-dir "$results/data-kafka" --partitions 8 \
		--kafka "$kafka" --postgres "$kafka_pg" "${isolation[@]}" --log warn; then
		bench flashsale-kafka "$port"
		stop_server
	else
		skipped+=("flashsale-kafka: failed: the server did not become ready (see $results/flashsale-kafka.server.log)")
		failed=1
	fi
fi

# --- flashsale embedded ---
port=$(free_port)
if start_server flashsale-embedded "$port" /ready "$FLASHSALE" serve --listen "127.0.0.1:$port" \
	--admin-token "$token" --data-dir "$results/data-embedded" --partitions 8 --log warn; then
	bench flashsale-embedded "$port"
	stop_server
else
	skipped+=("flashsale-embedded: failed: the server did not become ready (see $results/flashsale-embedded.server.log)")
	failed=1
fi

# --- baseline: PostgreSQL ---
pg_url=$postgres
if [[ -z $pg_url && -x $REPO/ops/postgres/start.sh ]]; then
	log "no FLASHSALE_POSTGRES: starting Postgres with ops/postgres/start.sh"
	if pg_url=$("$REPO/ops/postgres/start.sh" | tail -n 1); then
		started_postgres=1
	else
		pg_url=""
	fi
fi
if [[ -z $pg_url ]]; then
	skipped+=("baseline-postgres: skipped: no Postgres (set FLASHSALE_POSTGRES or run make services-up)")
else
	port=$(free_port)
	if start_server baseline-postgres "$port" /health "$bin/baseline-postgres" --listen "127.0.0.1:$port" \
		--admin-token "$token" --postgres "$pg_url"; then
		bench baseline-postgres "$port"
		stop_server
		# Its tables live in a schema of their own; leave the database as it was found.
		psql "$pg_url" -qc "DROP SCHEMA IF EXISTS bench_baseline CASCADE" >&2 2>/dev/null || true
	else
		skipped+=("baseline-postgres: failed: the server did not become ready (see $results/baseline-postgres.server.log)")
		failed=1
	fi
fi

# --- baseline: Redis ---
redis_port=${FLASHSALE_REDIS_PORT:-16379}
redis_was_up=0
[[ $(redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null || true) == PONG ]] && redis_was_up=1
if redis_url=$("$REPO/ops/redis/start.sh"); then
	((redis_was_up)) || started_redis=1
	port=$(free_port)
	if start_server baseline-redis "$port" /health "$bin/baseline-redis" --listen "127.0.0.1:$port" \
		--admin-token "$token" --redis "$redis_url"; then
		bench baseline-redis "$port"
		stop_server
	else
		skipped+=("baseline-redis: failed: the server did not become ready (see $results/baseline-redis.server.log)")
		failed=1
	fi
else
	skipped+=("baseline-redis: skipped: ops/redis/start.sh failed")
fi

((${#inputs[@]} > 0)) || fail "no target ran"
echo
rc=0
"$BENCH" compare "${inputs[@]}" --json-out "$results/compare.json" --html-out "$results/compare.html" |
	tee "$results/compare.txt" || rc=$?
for s in "${skipped[@]}"; do
	echo "$s" | tee -a "$results/compare.txt"
done
echo "reports: $results (open compare.html)"
((rc <= 1 && failed == 0)) || exit 2
((violations == 0 && rc == 0)) || exit 1
