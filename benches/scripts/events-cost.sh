#!/usr/bin/env bash
# benches/scripts/events-cost.sh - what publishing the public sale events costs (issue 33,
# docs/events.md "Benchmarks"), Kafka mode, in one run on this machine.
#
# Usage: benches/scripts/events-cost.sh [--rounds N] [--secs S] [--rate R] [--lag-secs S]
#                                       [--quick] [--skip-cost] [--skip-lag]
#   --rounds N    off/on pairs of the cost measurement; the table shows medians [3; 1 quick]
#   --secs S      seconds of each wrk run [15; 5 with --quick]
#   --rate R      holds/s offered in the lag measurement [5000]
#   --lag-secs S  seconds of the lag measurement [20; 8 with --quick]
#   --quick       a smoke run (indicative figures only)
#   --skip-cost / --skip-lag   run only the other half
#
# 1. Cost: `flashsale serve --kafka` (engine + gateway in one process, no Postgres: orders
#    in memory, snapshots in a temporary directory), each run on fresh topics (prefix
#    fsevc<time>r<round><off|on>.) made by `flashsale topics create --partitions 8`, one
#    SKU of 10^9 units; wrk (2 threads, 256 connections, benches/scripts/wrk-reserve.lua,
#    a new userId per request) for --secs. "off": nothing else runs; "on": `flashsale
#    events publish` runs beside it on the same topics. Off and on alternate within each
#    round, so both see the same machine. holds/s = 201 answers/s; the ratio on/off is
#    what publishing costs the sale (target >= 0.90).
# 2. Lag: the same server with the publisher, fresh topics, and beside it `flashsale events
#    tail --topic reservations --lag-summary` (read_committed, from the newest record)
#    while `flashsale-bench` offers --rate holds/s open loop for --lag-secs (8 products,
#    no reads, a million users). tail prints p50/p99/max of (time it read the record) -
#    (the event's CloudEvents `time`, the log time of the command, which is before the
#    engine replies): an upper bound of the reply-to-event lag (target p99 <= 100 ms).
#
# Needs FLASHSALE_KAFKA (from .services.env, as ops/services-up.sh writes it) and wrk
# (installed with apt-get when missing). Builds `flashsale` and `flashsale-bench` in
# release mode with CARGO_TARGET_DIR (default ~/.cache/flashsale-target) unless
# FLASHSALE_BENCH_NO_BUILD=1 (then uses the binaries there) or FLASHSALE_BIN is set.
# The load generator shares the machine with the server; run it on an idle machine for
# figures to quote (a full run: ~2 minutes per round plus the lag half).
#
# The cost table also shows each process's CPU per hold during the wrk run (utime +
# stime from /proc: the server, the publisher, the broker(s) listening on FLASHSALE_KAFKA's
# ports): where publishing's CPU goes. FLASHSALE_PUBLISH_ARGS: extra flags for `events
# publish` (e.g. "--publisher-commit-ms 50"), to compare settings.
# Writes to FLASHSALE_BENCH_RESULTS [target/bench-results/events-cost-<UTC time>]:
# measurements.tsv, table.txt, each process's log and each wrk output. Prints the table.
# The topics it creates stay on the broker (7 days' retention; prefix fsevc…).
# Exit status: 0 done, 2 set-up or a run failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
NAME=events-cost

# log, warn, fail, usage, stop_pid, free_port, record, release_binaries, broker_pids, …
# shellcheck source=benches/scripts/lib.sh
. "$HERE/lib.sh"

rounds="" secs="" lag_secs="" rate=5000 quick=0 do_cost=1 do_lag=1
while (($#)); do
	case $1 in
	-h | --help)
		usage
		exit 0
		;;
	--quick) quick=1 ;;
	--skip-cost) do_cost=0 ;;
	--skip-lag) do_lag=0 ;;
	--rounds)
		rounds=${2:?--rounds needs a number}
		shift
		;;
	--secs)
		secs=${2:?--secs needs a number}
		shift
		;;
	--lag-secs)
		lag_secs=${2:?--lag-secs needs a number}
		shift
		;;
	--rate)
		rate=${2:?--rate needs a number}
		shift
		;;
	*) fail "unknown argument: $1 (see --help)" ;;
	esac
	shift
done
((quick)) && rounds=${rounds:-1} secs=${secs:-5} lag_secs=${lag_secs:-8}
rounds=${rounds:-3} secs=${secs:-15} lag_secs=${lag_secs:-20}
[[ $rounds =~ ^[1-9][0-9]?$ ]] || fail "--rounds must be 1..99, got $rounds"
[[ $secs =~ ^[1-9][0-9]{0,3}$ ]] || fail "--secs must be 1..9999, got $secs"
[[ $lag_secs =~ ^[1-9][0-9]{0,3}$ ]] || fail "--lag-secs must be 1..9999, got $lag_secs"
[[ $rate =~ ^[1-9][0-9]{0,5}$ ]] || fail "--rate must be 1..999999, got $rate"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/flashsale-target}
if [[ -f $REPO/.services.env ]]; then
	# shellcheck disable=SC1091
	. "$REPO/.services.env"
fi
kafka=${FLASHSALE_KAFKA:-}
[[ -n $kafka ]] || fail "FLASHSALE_KAFKA is not set (make services-up writes .services.env)"
# Only what each command is given: no Postgres, no other prefix from the environment.
unset FLASHSALE_KAFKA FLASHSALE_POSTGRES FLASHSALE_TOPIC_PREFIX

results=$(abs_path "${FLASHSALE_BENCH_RESULTS:-$REPO/target/bench-results/events-cost-$(date -u +%Y%m%dT%H%M%SZ)}")
mkdir -p "$results"
tsv=$results/measurements.tsv
: >"$tsv"
token=bench-$(od -An -tx8 -N8 /dev/urandom | tr -d ' \n')
stamp=$(date -u +%H%M%S)

((do_cost)) && ensure_wrk
release_binaries

# --- processes this script starts (only these are ever stopped) ---
pids=()
tmpdirs=()
cleanup() {
	local p d
	for p in "${pids[@]}"; do stop_pid "$p"; done
	pids=()
	for d in "${tmpdirs[@]}"; do rm -rf "$d"; done
	return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

next_port=18281
# start_stack NAME PREFIX PORT PUBLISH(0|1): topics, `serve --kafka` (waits for /ready),
# and the publisher when asked. Sets server_pid and publisher_pid (empty when off).
server_pid="" publisher_pid=""
start_stack() {
	local name=$1 prefix=$2 port=$3 publish=$4 data i
	"$FLASHSALE" topics create --kafka "$kafka" --topic-prefix "$prefix" --partitions 8 \
		>"$results/$name.topics.log" 2>&1 || fail "topics create $prefix (see $results/$name.topics.log)"
	data=$(mktemp -d)
	tmpdirs+=("$data")
	FLASHSALE_RATE_LIMIT_PER_USER=0 "$FLASHSALE" serve --kafka "$kafka" --topic-prefix "$prefix" \
		--listen "127.0.0.1:$port" --admin-token "$token" --data-dir "$data" \
		--engine-group "${prefix}engine" >"$results/$name.server.log" 2>&1 &
	server_pid=$!
	pids+=("$server_pid")
	for ((i = 0; i < 300; i++)); do
		http_ok "$port" /ready && break
		alive "$server_pid" || fail "$name: the server exited (see $results/$name.server.log)"
		sleep 0.2
	done
	http_ok "$port" /ready || fail "$name: not ready in 60 s (see $results/$name.server.log)"
	publisher_pid=""
	if ((publish)); then
		"$FLASHSALE" events publish --kafka "$kafka" --topic-prefix "$prefix" \
			${FLASHSALE_PUBLISH_ARGS:-} >"$results/$name.publisher.log" 2>&1 &
		publisher_pid=$!
		pids+=("$publisher_pid")
	fi
}
stop_stack() { cleanup; }

# create_sale PORT SKU...: products of 10^9 units each, open from a second ago for a day.
create_sale() {
	local port=$1 now end products="" sku code
	shift
	now=$(date -u -d '-1 sec' +%Y-%m-%dT%H:%M:%SZ)
	end=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
	for sku in "$@"; do
		products+=$(printf '%s{"skuId":"%s","name":"Hot","description":"events-cost","category":"Bench","basePrice":100.0,"flashSalePrice":79.99,"totalInventory":1000000000,"perUserLimit":1,"imageUrl":""}' \
			"${products:+,}" "$sku")
	done
	code=$(curl -s -o "$results/sale-$port.json" -w '%{http_code}' --max-time 10 \
		-H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
		-d "{\"name\":\"events-cost\",\"startsAt\":\"$now\",\"endsAt\":\"$end\",\"reservationTtlSeconds\":3600,\"products\":[$products]}" \
		"http://127.0.0.1:$port/api/v1/admin/sales")
	[[ $code == 201 ]] || fail "create sale on port $port: HTTP $code: $(cat "$results/sale-$port.json")"
}

field() { tr ' ' '\n' <"$1" | awk -F= -v k="$2" '$1 == k {print $2}'; }
div() { awk -v a="$1" -v b="$2" -v s="${3:-1}" 'BEGIN { if (b > 0) printf "%.1f", a * s / b; else print "nan" }'; }
median() { sort -g | awk '{v[NR] = $1} END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

if ((do_cost)); then
	for ((r = 1; r <= rounds; r++)); do
		for mode in off on; do
			name=r$r-$mode
			prefix=fsevc$stamp${r}$mode.
			port=$(free_port)
			log "== round $r, publishing $mode: wrk 256 connections, ${secs}s"
			start_stack "$name" "$prefix" "$port" "$([[ $mode == on ]] && echo 1 || echo 0)"
			sku=EVC-$r-$mode
			create_sale "$port" "$sku"
			brokers=$(broker_pids)
			# shellcheck disable=SC2086 # pids, split on purpose
			t0=("$(ticks_of "$server_pid")" "$(ticks_of $publisher_pid)" "$(ticks_of $brokers)")
			FLASHSALE_WRK_MODE=reserve FLASHSALE_WRK_SKU="$sku" FLASHSALE_WRK_TAG="u$r$mode" \
				wrk -t2 -c256 -d"${secs}s" --timeout 10s -s "$HERE/wrk-reserve.lua" "http://127.0.0.1:$port" \
				>"$results/$name.wrk.txt" 2>&1 || warn "wrk exited non-zero (see $results/$name.wrk.txt)"
			grep '^wrk-result ' "$results/$name.wrk.txt" | tail -n 1 | cut -d' ' -f2- >"$results/$name.wrk" || true
			# shellcheck disable=SC2086
			t1=("$(ticks_of "$server_pid")" "$(ticks_of $publisher_pid)" "$(ticks_of $brokers)")
			[[ -s $results/$name.wrk ]] || fail "$name: wrk gave no result (see $results/$name.wrk.txt)"
			s201=$(field "$results/$name.wrk" s201)
			record "$mode" server_cpu_us_per_hold "$(div "$((t1[0] - t0[0]))" "$s201" "$((1000000 / clk_tck))")"
			record "$mode" publisher_cpu_us_per_hold "$(div "$((t1[1] - t0[1]))" "$s201" "$((1000000 / clk_tck))")"
			record "$mode" broker_cpu_us_per_hold "$(div "$((t1[2] - t0[2]))" "$s201" "$((1000000 / clk_tck))")"
			record "$mode" holds_per_s "$(div "$(field "$results/$name.wrk" s201)" "$(field "$results/$name.wrk" duration_us)" 1e6)"
			record "$mode" p99_ms "$(div "$(field "$results/$name.wrk" p99_us)" 1000)"
			stop_stack
		done
	done
fi

if ((do_lag)); then
	name=lag
	prefix=fsevc${stamp}lag.
	port=$(free_port)
	log "== lag: $rate holds/s for ${lag_secs}s, publisher on, events tail --lag-summary"
	start_stack "$name" "$prefix" "$port" 1
	# The reader starts at the newest record: give it time to be assigned first.
	"$FLASHSALE" events tail --kafka "$kafka" --topic-prefix "$prefix" --topic reservations \
		--idle-exit 5 --lag-summary >/dev/null 2>"$results/lag.tail.log" &
	tail_pid=$!
	pids+=("$tail_pid")
	sleep 3
	"$BENCH" --target "http://127.0.0.1:$port" --label events-lag --admin-token "$token" \
		--progress off --products 8 --hot-share 0.125 --inventory 1000000000 \
		--per-user-limit 1000 --users 1000000 --reads-per-write 0 --read-rate 0 \
		--write-rate "$rate" --duration-secs "$lag_secs" --warmup-secs 2 \
		--json-out "$results/lag-bench.json" >"$results/lag-bench.txt" 2>&1 ||
		warn "flashsale-bench exited non-zero (see $results/lag-bench.txt)"
	# tail exits 5 s after the last record.
	for ((i = 0; i < 150; i++)); do
		alive "$tail_pid" || break
		sleep 0.2
	done
	line=$(grep -o 'lag: n=.*' "$results/lag.tail.log" | tail -n 1 || true)
	[[ -n $line ]] || fail "events tail printed no lag summary (see $results/lag.tail.log)"
	for k in n p50 p99 max; do
		record lag "$k" "$(tr ' ' '\n' <<<"${line#lag: }" | awk -F= -v k="$k" '$1 == k {sub(/ms$/, "", $2); print $2}')"
	done
	offered=$(grep -o '"write_rate_per_s":[0-9.]*' "$results/lag-bench.json" 2>/dev/null | head -n 1 | cut -d: -f2 || true)
	record lag offered_holds_per_s "${offered:-$rate}"
	stop_stack
fi

{
	printf 'events-cost (%s, load average %s)\n' "$(date -u +%FT%TZ)" "$(cut -d' ' -f1-3 /proc/loadavg)"
	if ((do_cost)); then
		off=$(awk -F'\t' '$1 == "off" && $2 == "holds_per_s" {print $3}' "$tsv" | median)
		on=$(awk -F'\t' '$1 == "on" && $2 == "holds_per_s" {print $3}' "$tsv" | median)
		offp=$(awk -F'\t' '$1 == "off" && $2 == "p99_ms" {print $3}' "$tsv" | median)
		onp=$(awk -F'\t' '$1 == "on" && $2 == "p99_ms" {print $3}' "$tsv" | median)
		printf '%-34s %12s %12s %8s\n' "Kafka mode, 256 connections" "off" "on" "on/off"
		printf '%-34s %12s %12s %8s\n' "holds/s (median of $rounds)" "$off" "$on" "$(awk -v a="$on" -v b="$off" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "nan" }')"
		printf '%-34s %12s %12s\n' "wrk p99 ms" "$offp" "$onp"
		for w in server publisher broker; do
			printf '%-34s %12s %12s\n' "$w CPU us per hold" \
				"$(awk -F'\t' -v k="${w}_cpu_us_per_hold" '$1 == "off" && $2 == k {print $3}' "$tsv" | median)" \
				"$(awk -F'\t' -v k="${w}_cpu_us_per_hold" '$1 == "on" && $2 == k {print $3}' "$tsv" | median)"
		done
	fi
	if ((do_lag)); then
		get() { awk -F'\t' -v k="$1" '$1 == "lag" && $2 == k {print $3}' "$tsv"; }
		printf 'lag hold -> created on the topic at %s holds/s offered: n=%s p50=%s ms p99=%s ms max=%s ms\n' \
			"$(get offered_holds_per_s)" "$(get n)" "$(get p50)" "$(get p99)" "$(get max)"
	fi
} | tee "$results/table.txt"
log "results in $results"
