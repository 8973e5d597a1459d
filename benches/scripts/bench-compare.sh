#!/usr/bin/env bash
# benches/scripts/bench-compare.sh - flashsale side by side with the designs it replaces
# (issue 11), in one run on this machine, printed as ONE table. `make bench-compare`.
#
# Usage: benches/scripts/bench-compare.sh [--rounds N] [--secs S] [--quick] [--only LIST]
#   --rounds N   rounds per target; the table shows medians [3; 1 with --quick]
#   --secs S     seconds per wrk row [15; 3 with --quick]
#   --quick      a smoke run: short wrk rows, a three-step find-max
#   --only LIST  targets to run, comma-separated: embedded,kafka,redis,postgres [all]
#
# Per target and round, the server is started fresh on 127.0.0.1 (its own data dir, or
# topics and database, or schema), with the per-user rate limit off, a sale of one SKU of
# 10^9 units is created, and then:
#   1. wrk (closed loop, 2 threads, 64 connections) on /health (the HTTP ceiling of the
#      same binary) and on the availability read of the SKU;
#   2. wrk POST /api/v1/reservations at 64 and at 256 connections, a new userId per
#      request (benches/scripts/wrk-reserve.lua): holds/s = 201 answers/s, wrk's p50/p99,
#      and the server's CPU per hold from /proc/<pid>/stat (utime + stime), and in Kafka
#      mode the broker's (the pid listening on the bootstrap port, else `pgrep -f
#      kafka.Kafka`); before them, on the idle server, a lone buyer: 200 holds one after
#      another on one connection (curl -K), p50/p99 (the `lone` row);
#   3. flashsale-bench --find-max on benches/scenarios/capacity.toml (open loop, the
#      highest write rate with reservation p99 <= the SLO).
# Then `flashsale-bench side-by-side` prints the medians with ratios (holds/s to flashsale
# embedded at the same connections, reads to /health of the same server).
#
# Targets (each skipped with a note when its service is missing):
#   flashsale-embedded  flashsale serve (embedded mode)
#   flashsale-kafka     flashsale serve --kafka --postgres: needs FLASHSALE_KAFKA and
#                       FLASHSALE_POSTGRES from .services.env (make services-up); each round
#                       on topics prefixed fsbench<time>r<round>. and a database of that name
#   baseline-redis      one Lua script per reservation (Redis from ops/redis/start.sh)
#   baseline-postgres   the seed's design (FLASHSALE_POSTGRES, else ops/postgres/start.sh)
#
# Installs Debian's wrk with apt-get when it is missing. Builds the binaries in release
# mode first (`cargo build --release --bin flashsale` from the workspace root, whichever
# crate holds it, and the bench crate's binaries) with CARGO_TARGET_DIR (default
# ~/.cache/flashsale-target). A full run is about 100 s per target and round (20 minutes
# for 4 targets x 3 rounds), plus the build: run it on an otherwise idle machine, or the
# figures measure the neighbours too. The load generator shares the machine with the
# server (as in issue 11).
#
# Environment (defaults in brackets):
#   FLASHSALE_BENCH_RESULTS     results dir [target/bench-results/<UTC time>]
#   FLASHSALE_BENCH_SLO_P99_MS  p99 SLO of --find-max [50]
#   FLASHSALE_BIN               use this flashsale binary, do not build it
#   FLASHSALE_BENCH_NO_BUILD=1  use the binaries already in $CARGO_TARGET_DIR/release
#   FLASHSALE_KAFKA, FLASHSALE_POSTGRES   as ops/services-up.sh writes to .services.env
# Writes to the results dir: measurements.tsv (one line per figure and round), table.txt
# and table.json, each find-max report (.json/.html), each server's log.
# Exit status: 0 clean, 1 when a find-max found correctness violations, 2 when a run or
# the set-up failed (targets skipped for want of a service do not count).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
NAME=bench-compare

# log, warn, fail, usage, stop_pid, free_port, record, release_binaries, broker_pids, …
# shellcheck source=benches/scripts/lib.sh
. "$HERE/lib.sh"

rounds="" secs="" quick=0 only=embedded,kafka,redis,postgres
while (($#)); do
	case $1 in
	-h | --help)
		usage
		exit 0
		;;
	--quick) quick=1 ;;
	--rounds)
		rounds=${2:?--rounds needs a number}
		shift
		;;
	--secs)
		secs=${2:?--secs needs a number}
		shift
		;;
	--only)
		only=${2:?--only needs a list}
		shift
		;;
	*) fail "unknown argument: $1 (see --help)" ;;
	esac
	shift
done
((quick)) && rounds=${rounds:-1} secs=${secs:-3}
rounds=${rounds:-3} secs=${secs:-15}
[[ $rounds =~ ^[1-9][0-9]?$ ]] || fail "--rounds must be 1..99, got $rounds"
[[ $secs =~ ^[1-9][0-9]*$ ]] || fail "--secs must be a whole number of seconds, got $secs"
wanted() { [[ ,$only, == *,$1,* ]]; }

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
tsv=$results/measurements.tsv
: >"$tsv"
slo=${FLASHSALE_BENCH_SLO_P99_MS:-50}
token=bench-$(od -An -tx8 -N8 /dev/urandom | tr -d ' \n')

# --- tools and binaries ---
ensure_wrk
release_binaries
# The baselines are built with the bench crate (release_binaries).
bin=$CARGO_TARGET_DIR/release
need=()
[[ ,$only, == *,postgres,* ]] && need+=("$bin/baseline-postgres")
[[ ,$only, == *,redis,* ]] && need+=("$bin/baseline-redis")
for b in "${need[@]}"; do
	[[ -x $b ]] || fail "missing binary $b"
done

# --- processes and state this script creates (only these are ever stopped or dropped) ---
server_pid=""
started_redis=0
started_postgres=0
dbs=()
cleanup() {
	[[ -n $server_pid ]] && stop_pid "$server_pid"
	server_pid=""
	for db in "${dbs[@]}"; do
		psql "$postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >&2 2>/dev/null || true
	done
	((started_redis)) && { "$REPO/ops/redis/stop.sh" >&2 || true; }
	((started_postgres)) && { "$REPO/ops/postgres/stop.sh" >&2 || true; }
	return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

next_port=18181

# start_server NAME PORT READY_PATH CMD...: CMD in the background (rate limit off), log in
# the results dir, waits up to 60 s for READY_PATH to answer 200. Returns 1 otherwise.
start_server() {
	local name=$1 port=$2 ready=$3 i
	shift 3
	FLASHSALE_RATE_LIMIT_PER_USER=0 "$@" >>"$results/$name.server.log" 2>&1 &
	server_pid=$!
	for ((i = 0; i < 300; i++)); do
		http_ok "$port" "$ready" && return 0
		alive "$server_pid" || break
		sleep 0.2
	done
	warn "$name did not answer $ready on port $port; last lines of its log:"
	tail -n 20 "$results/$name.server.log" >&2 || true
	stop_pid "$server_pid"
	server_pid=""
	return 1
}
stop_server() {
	[[ -n $server_pid ]] && stop_pid "$server_pid"
	server_pid=""
}

note() {
	record "$1" note "$2"
	warn "$1: $2"
}

# create_sale PORT SKU: one product of 10^9 units, open from a second ago for a day.
create_sale() {
	local port=$1 sku=$2 now end body code
	now=$(date -u -d '-1 sec' +%Y-%m-%dT%H:%M:%SZ)
	end=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
	body=$(printf '{"name":"bench-compare %s","startsAt":"%s","endsAt":"%s","reservationTtlSeconds":3600,"products":[{"skuId":"%s","name":"Hot","description":"bench-compare hot SKU","category":"Bench","basePrice":100.0,"flashSalePrice":79.99,"totalInventory":1000000000,"perUserLimit":1,"imageUrl":""}]}' \
		"$sku" "$now" "$end" "$sku")
	code=$(curl -s -o "$results/sale-$sku.json" -w '%{http_code}' --max-time 10 \
		-H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
		-d "$body" "http://127.0.0.1:$port/api/v1/admin/sales")
	[[ $code == 201 ]] || {
		warn "create sale on port $port: HTTP $code: $(cat "$results/sale-$sku.json")"
		return 1
	}
}

# lone_buyer NAME PORT SKU OUT: 200 holds one after another on one connection (curl -K,
# a new userId each) on the idle server: their p50/p99 and rate as the `…@1` row.
lone_buyer() {
	local name=$1 port=$2 sku=$3 out=$4 i
	: >"$out.curl"
	for ((i = 0; i < 200; i++)); do
		printf 'url = "http://127.0.0.1:%s/api/v1/reservations"\nrequest = "POST"\nheader = "content-type: application/json"\ndata = "{\\"userId\\":\\"lone-%s-%s\\",\\"skuId\\":\\"%s\\",\\"quantity\\":1}"\noutput = "/dev/null"\nwrite-out = "%%{http_code} %%{time_total}\\n"\nnext\n' \
			"$port" "$RANDOM$RANDOM" "$i" "$sku" >>"$out.curl"
	done
	curl -s -K "$out.curl" >"$out.times" 2>/dev/null || warn "curl exited non-zero (lone buyer, $name)"
	local ok total
	ok=$(awk '$1 == 201' "$out.times" | wc -l)
	if ((ok == 0)); then
		note "$name" "the lone buyer got no 201 (see $out.times)"
		return 0
	fi
	((ok == 200)) || note "$name" "the lone buyer got $ok 201s of 200"
	total=$(awk '$1 == 201 {s += $2} END {print s}' "$out.times")
	record "$name" "holds_per_s@1" "$(div "$ok" "$total")"
	record "$name" "p50_ms@1" "$(awk '$1 == 201 {print $2 * 1000}' "$out.times" | sort -n | awk '{v[NR] = $1} END {print v[int((NR - 1) * 0.50) + 1]}')"
	record "$name" "p99_ms@1" "$(awk '$1 == 201 {print $2 * 1000}' "$out.times" | sort -n | awk '{v[NR] = $1} END {print v[int((NR - 1) * 0.99) + 1]}')"
}

# wrk_run OUT CONNS URL [env...]: wrk for $secs s; leaves the wrk-result fields in $OUT.
wrk_run() {
	local out=$1 conns=$2 url=$3
	shift 3
	env "$@" wrk -t2 -c"$conns" -d"${secs}s" --timeout 10s -s "$HERE/wrk-reserve.lua" "$url" \
		>"$out.txt" 2>&1 || warn "wrk exited non-zero (see $out.txt)"
	grep '^wrk-result ' "$out.txt" | tail -n 1 | cut -d' ' -f2- >"$out" || true
	[[ -s $out ]]
}
# field FILE KEY: a value from a wrk-result line.
field() { tr ' ' '\n' <"$1" | awk -F= -v k="$2" '$1 == k {print $2}'; }
div() { awk -v a="$1" -v b="$2" -v s="${3:-1}" 'BEGIN { if (b > 0) printf "%.3f", a * s / b; else print "nan" }'; }

violations=0
failed=0
# measure NAME PORT ROUND: every row against the server on PORT (pid $server_pid).
measure() {
	local name=$1 port=$2 r=$3 sku out c before after s201 dur rc
	sku=WRK-$r-$(od -An -tx4 -N4 /dev/urandom | tr -d ' \n')
	create_sale "$port" "$sku" || {
		note "$name" "round $r: could not create the sale"
		failed=1
		return 0
	}
	out=$results/$name-r$r
	if wrk_run "$out-health" 64 "http://127.0.0.1:$port/health" FLASHSALE_WRK_MODE=get; then
		record "$name" health_per_s "$(div "$(field "$out-health" requests)" "$(field "$out-health" duration_us)" 1e6)"
	fi
	if wrk_run "$out-reads" 64 "http://127.0.0.1:$port/api/v1/products/$sku/availability" FLASHSALE_WRK_MODE=get; then
		record "$name" reads_per_s "$(div "$(field "$out-reads" requests)" "$(field "$out-reads" duration_us)" 1e6)"
	fi
	# First, on the idle server: the lone buyer.
	sleep 1
	lone_buyer "$name" "$port" "$sku" "$out-lone"
	local brokers="" bbefore bafter
	[[ $name == flashsale-kafka ]] && brokers=$(broker_pids)
	for c in 64 256; do
		bbefore=$(ticks_of $brokers)
		before=$(cpu_ticks "$server_pid")
		if ! wrk_run "$out-hold$c" "$c" "http://127.0.0.1:$port" \
			FLASHSALE_WRK_MODE=reserve FLASHSALE_WRK_SKU="$sku" FLASHSALE_WRK_TAG="u$r-$c"; then
			note "$name" "round $r: wrk at $c connections gave no result (see $out-hold$c.txt)"
			continue
		fi
		after=$(cpu_ticks "$server_pid")
		bafter=$(ticks_of $brokers)
		s201=$(field "$out-hold$c" s201)
		dur=$(field "$out-hold$c" duration_us)
		record "$name" "holds_per_s@$c" "$(div "$s201" "$dur" 1e6)"
		record "$name" "p50_ms@$c" "$(div "$(field "$out-hold$c" p50_us)" 1000)"
		record "$name" "p99_ms@$c" "$(div "$(field "$out-hold$c" p99_us)" 1000)"
		record "$name" "cpu_us_per_hold@$c" "$(div "$((after - before))" "$s201" "$((1000000 / clk_tck))")"
		[[ -z $brokers ]] || record "$name" "broker_cpu_us_per_hold@$c" "$(div "$((bafter - bbefore))" "$s201" "$((1000000 / clk_tck))")"
		local other errs
		other=$(field "$out-hold$c" non201)
		errs=$(field "$out-hold$c" errors)
		if ((other + errs > 0)); then
			note "$name" "round $r, $c connections: $other answers other than 201 and $errs transport errors (of $((s201 + other + errs)))"
		fi
	done
	log "== $name round $r: find-max (p99 <= $slo ms)"
	rc=0
	"$BENCH" --target "http://127.0.0.1:$port" --label "$name" --admin-token "$token" \
		--progress off "${capacity[@]}" --json-out "$out-max.json" --html-out "$out-max.html" \
		>"$out-max.txt" 2>&1 || rc=$?
	case $rc in
	0) record "$name" find_max_report "$out-max.json" ;;
	1)
		violations=1
		record "$name" find_max_report "$out-max.json"
		note "$name" "round $r: find-max found correctness violations (see $out-max.txt)"
		;;
	*)
		note "$name" "round $r: find-max failed (exit $rc, see $out-max.txt)"
		failed=1
		;;
	esac
}

capacity=(--scenario "$REPO/benches/scenarios/capacity.toml" --find-max --slo-p99-ms "$slo"
	--find-max-factor 1.6)
if ((quick)); then
	capacity+=(--find-max-start 200 --find-max-step-secs 1.5 --find-max-steps 3 --find-max-refine 0 --warmup-secs 1)
else
	# 500 × 1.6^9 ≈ 34,000/s: the search reaches issue 11's targets within its steps.
	capacity+=(--find-max-start 500 --find-max-step-secs 3 --find-max-steps 10 --find-max-refine 1)
fi

# --- flashsale embedded ---
if wanted embedded; then
	for ((r = 1; r <= rounds; r++)); do
		log "== flashsale-embedded round $r of $rounds"
		port=$(free_port)
		rm -rf "$results/data-embedded"
		if start_server flashsale-embedded "$port" /ready "$FLASHSALE" serve --listen "127.0.0.1:$port" \
			--admin-token "$token" --data-dir "$results/data-embedded" --partitions 8 --log warn; then
			measure flashsale-embedded "$port" "$r"
			stop_server
		else
			note flashsale-embedded "round $r: the server did not become ready (see $results/flashsale-embedded.server.log)"
			failed=1
		fi
	done
	rm -rf "$results/data-embedded"
fi

# --- flashsale on Kafka + Postgres ---
if wanted kafka; then
	serve_help=$("$FLASHSALE" serve --help 2>/dev/null || true)
	if [[ -z $kafka ]]; then
		note flashsale-kafka "skipped: no FLASHSALE_KAFKA in .services.env (run make services-up)"
	elif [[ -z $postgres ]]; then
		note flashsale-kafka "skipped: no FLASHSALE_POSTGRES in .services.env (run make services-up)"
	elif ! grep -q -- '--kafka' <<<"$serve_help"; then
		note flashsale-kafka "skipped: this flashsale binary has no --kafka flag"
	elif ! command -v psql >/dev/null; then
		note flashsale-kafka "skipped: psql is needed to create the round's database"
	else
		for ((r = 1; r <= rounds; r++)); do
			log "== flashsale-kafka round $r of $rounds"
			tag=fsbench$(date -u +%Y%m%d%H%M%S)r$r
			if ! psql "$postgres" -v ON_ERROR_STOP=1 -qc "CREATE DATABASE $tag" >&2; then
				note flashsale-kafka "round $r: could not create database $tag"
				failed=1
				continue
			fi
			dbs+=("$tag")
			kafka_pg=${postgres%/*}/$tag
			isolation=()
			grep -q -- '--topic-prefix' <<<"$serve_help" && isolation+=(--topic-prefix "$tag.")
			grep -q -- '--engine-group' <<<"$serve_help" && isolation+=(--engine-group "$tag")
			port=$(free_port)
			if ! "$FLASHSALE" migrate --postgres "$kafka_pg" --log warn >>"$results/flashsale-kafka.migrate.log" 2>&1; then
				note flashsale-kafka "round $r: flashsale migrate failed (see $results/flashsale-kafka.migrate.log)"
				failed=1
			elif FLASHSALE_KAFKA=$kafka start_server flashsale-kafka "$port" /ready "$FLASHSALE" serve \
				--listen "127.0.0.1:$port" --admin-token "$token" --data-dir "$results/data-kafka-$r" \
				--partitions 8 --kafka "$kafka" --postgres "$kafka_pg" "${isolation[@]}" --log warn; then
				measure flashsale-kafka "$port" "$r"
				stop_server
			else
				note flashsale-kafka "round $r: the server did not become ready (see $results/flashsale-kafka.server.log)"
				failed=1
			fi
			rm -rf "$results/data-kafka-$r"
		done
	fi
fi

# --- baseline: Redis ---
if wanted redis; then
	redis_port=${FLASHSALE_REDIS_PORT:-16379}
	redis_was_up=0
	[[ $(redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null || true) == PONG ]] && redis_was_up=1
	if [[ ! -x $REPO/ops/redis/start.sh ]]; then
		note baseline-redis "skipped: no ops/redis/start.sh"
	elif redis_url=$("$REPO/ops/redis/start.sh"); then
		((redis_was_up)) || started_redis=1
		for ((r = 1; r <= rounds; r++)); do
			log "== baseline-redis round $r of $rounds"
			port=$(free_port)
			if start_server baseline-redis "$port" /health "$bin/baseline-redis" --listen "127.0.0.1:$port" \
				--admin-token "$token" --redis "$redis_url"; then
				measure baseline-redis "$port" "$r"
				stop_server
			else
				note baseline-redis "round $r: the server did not become ready"
				failed=1
			fi
		done
	else
		note baseline-redis "skipped: ops/redis/start.sh failed"
	fi
fi

# --- baseline: PostgreSQL ---
if wanted postgres; then
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
		note baseline-postgres "skipped: no Postgres (set FLASHSALE_POSTGRES or run make services-up)"
	else
		for ((r = 1; r <= rounds; r++)); do
			log "== baseline-postgres round $r of $rounds"
			port=$(free_port)
			# It drops and recreates its bench_baseline schema at each start.
			if start_server baseline-postgres "$port" /health "$bin/baseline-postgres" --listen "127.0.0.1:$port" \
				--admin-token "$token" --postgres "$pg_url"; then
				measure baseline-postgres "$port" "$r"
				stop_server
			else
				note baseline-postgres "round $r: the server did not become ready"
				failed=1
			fi
		done
		psql "$pg_url" -qc "DROP SCHEMA IF EXISTS bench_baseline CASCADE" >&2 2>/dev/null || true
	fi
fi

echo
"$BENCH" side-by-side "$tsv" --slo-p99-ms "$slo" --json-out "$results/table.json" 2>"$results/side-by-side.log" |
	tee "$results/table.txt" || fail "side-by-side failed"
echo "rounds: $rounds, $secs s per wrk row$( ((quick)) && echo ' (--quick: a smoke run, not figures)'); results: $results"
((failed == 0)) || exit 2
((violations == 0)) || exit 1
