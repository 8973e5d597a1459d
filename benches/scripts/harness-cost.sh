#!/usr/bin/env bash
# benches/scripts/harness-cost.sh - what the harness itself costs: its CPU per request
# and the highest rate one harness core offers without lagging, against a pinned server.
#
# Usage: benches/scripts/harness-cost.sh [--rates "5000 10000 20000 30000"] [--secs S]
#                                        [--what reads,writes] [--server-cpus L]
#                                        [--harness-cpus L] [--capacity N] [--perf RATE]
#                                        [--out DIR] [--bin PATH] [--bench PATH]
#   --rates R         offered rates, requests/s, one step each [5000 10000 20000 30000]
#   --secs S          measured seconds per step [5]
#   --what W          comma-separated: reads (availability reads of one SKU: the cheapest
#                     request of the API for the server, a read from memory), writes
#                     (reservations on one hot SKU, capacity.toml's shape: above the
#                     server's capacity most are shed with 503, as in overload.toml)
#                     [reads,writes]
#   --server-cpus L   cores of the server (taskset list) [0]
#   --harness-cpus L  cores of the harness [1] (one thread per core given)
#   --capacity N      the pinned server's find-max (writes/s; e.g. from crowd.sh's
#                     embedded-max.json): the table then says whether one harness core
#                     offers >= 3x it without lag
#   --perf RATE       also `perf record -g` the harness for the writes step at RATE
#                     (RATE must be one of --rates); prints its top symbols; needs perf
#   --out DIR         reports [a new temporary directory]
#   --bin / --bench   the flashsale / flashsale-bench binaries [$CARGO_TARGET_DIR/release/…,
#                     built in release mode when not given]
#
# One embedded server (`flashsale serve --embedded`, 8 partitions) on the server cores,
# one harness run per step on the harness cores (fresh sale per step, 1 s warm-up). Per
# step the harness's own JSON report gives: requests sent, its CPU (utime + stime of the
# whole process over the measured phase, /proc/self/stat) per request and in cores, its
# send lag p99 and whether it lagged ("spoiled": p99 > 5 ms or > a quarter of the p99).
# The answer: the highest rate whose step did not lag, and 1e6 / (µs per request), the
# rate one core could offer at 100 %. About (secs + 4) s per step.
# Example (on an idle machine):
#   benches/scripts/harness-cost.sh --rates "10000 20000 30000 40000" --capacity 8000
set -euo pipefail
cd "$(dirname "$0")/../.."
RATES="5000 10000 20000 30000" SECS=5 WHAT=reads,writes SERVER_CPUS=0 HARNESS_CPUS=1
CAPACITY= PERF_RATE= OUT= BIN= BENCH=
while (($#)); do
	case $1 in
	--rates) RATES=$2; shift 2 ;;
	--secs) SECS=$2; shift 2 ;;
	--what) WHAT=$2; shift 2 ;;
	--server-cpus) SERVER_CPUS=$2; shift 2 ;;
	--harness-cpus) HARNESS_CPUS=$2; shift 2 ;;
	--capacity) CAPACITY=$2; shift 2 ;;
	--perf) PERF_RATE=$2; shift 2 ;;
	--out) OUT=$2; shift 2 ;;
	--bin) BIN=$2; shift 2 ;;
	--bench) BENCH=$2; shift 2 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "harness-cost: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done
for r in $RATES; do
	[[ $r =~ ^[1-9][0-9]{0,5}$ ]] || { echo "harness-cost: rate '$r' must be 1..999999" >&2; exit 2; }
done
[[ $SECS =~ ^[1-9][0-9]?$ ]] || { echo "harness-cost: --secs must be 1..99" >&2; exit 2; }
[[ -z $CAPACITY || $CAPACITY =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "harness-cost: --capacity must be a number" >&2; exit 2; }
IFS=, read -r -a WHATS <<<"$WHAT"
for w in "${WHATS[@]}"; do
	[[ $w == reads || $w == writes ]] || { echo "harness-cost: unknown --what '$w' (reads, writes)" >&2; exit 2; }
done
command -v taskset >/dev/null || { echo "harness-cost: taskset (util-linux) is needed" >&2; exit 2; }
command -v python3 >/dev/null || { echo "harness-cost: python3 is needed for the table" >&2; exit 2; }
[[ -z $PERF_RATE ]] || command -v perf >/dev/null || { echo "harness-cost: --perf needs perf (apt-get install linux-perf)" >&2; exit 2; }
THREADS=$(python3 - "$SERVER_CPUS" "$HARNESS_CPUS" <<'PY'
import os, re, sys
def cpus(l):
    if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", l):
        sys.exit(f"harness-cost: '{l}' is not a list of cores (e.g. 0, 0-1, 0,2)")
    s = set()
    for part in l.split(","):
        a, _, b = part.partition("-")
        s.update(range(int(a), int(b or a) + 1))
    if not s <= os.sched_getaffinity(0):
        sys.exit(f"harness-cost: this machine has no core in '{l}' that it may use")
    return s
server, harness = cpus(sys.argv[1]), cpus(sys.argv[2])
if server & harness:
    sys.exit("harness-cost: --server-cpus and --harness-cpus overlap")
print(len(harness))
PY
)
if [[ -z $BIN || -z $BENCH ]]; then
	export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flashsale-target}"
	cargo build --release --bin flashsale --bin flashsale-bench
	BIN=${BIN:-$CARGO_TARGET_DIR/release/flashsale}
	BENCH=${BENCH:-$CARGO_TARGET_DIR/release/flashsale-bench}
fi
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/flashsale-harness-cost.XXXXXX")}
mkdir -p "$OUT"
PORT=${FLASHSALE_BENCH_PORT:-18950} TOKEN=harness-cost
DATA=$(mktemp -d "${TMPDIR:-/tmp}/flashsale-harness-cost-data.XXXXXX")
PID=
cleanup() {
	[[ -z $PID ]] || { kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
	rm -rf "$DATA"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
taskset -c "$SERVER_CPUS" "$BIN" serve --embedded --data-dir "$DATA" --partitions 8 \
	--listen "127.0.0.1:$PORT" --admin-token "$TOKEN" --log warn >"$OUT/server.log" 2>&1 &
PID=$!
for _ in $(seq 300); do
	[[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/ready") == 200 ]] && break
	kill -0 "$PID" 2>/dev/null || { echo "harness-cost: the server stopped:" >&2; tail -5 "$OUT/server.log" >&2; exit 2; }
	sleep 0.2
done
echo "harness-cost: $(uptime)" | tee "$OUT/uptime.txt" >&2
echo "harness-cost: server on cores $SERVER_CPUS, harness on cores $HARNESS_CPUS ($THREADS thread(s))" >&2
for w in "${WHATS[@]}"; do
	for r in $RATES; do
		if [[ $w == reads ]]; then
			load=(--write-rate 1 --read-rate "$r")
		else
			load=(--write-rate "$r")
		fi
		printf 'harness-cost: %-6s %7s/s ' "$w" "$r" >&2
		taskset -c "$HARNESS_CPUS" "$BENCH" --target "http://127.0.0.1:$PORT" --admin-token "$TOKEN" \
			--progress off --client-threads "$THREADS" --scenario benches/scenarios/capacity.toml \
			"${load[@]}" --duration-secs "$SECS" --warmup-secs 1 --sku-prefix "HC$w$r" \
			--json-out "$OUT/$w-$r.json" >"$OUT/$w-$r.txt" 2>&1 &
		hpid=$!
		if [[ $w == writes && $r == "$PERF_RATE" ]]; then
			# The measured phase starts after set-up and the 1 s warm-up.
			sleep 2
			perf record -g -o "$OUT/perf.data" -p "$hpid" -- sleep "$SECS" >/dev/null 2>&1 || true
		fi
		rc=0
		wait "$hpid" || rc=$?
		((rc < 2)) || { echo "could not run (exit $rc):" >&2; tail -5 "$OUT/$w-$r.txt" >&2; exit 2; }
		grep -m1 '^harness CPU' "$OUT/$w-$r.txt" >&2 || echo "done" >&2
	done
done
python3 - "$OUT" "$CAPACITY" "$RATES" "${WHATS[@]}" <<'PY'
import json, os, sys
out, capacity, rates, whats = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4:]
print()
print("| load | offered/s | sent | harness µs/request | harness cores | send lag p99 | lagged | answered ok / shed / errors |")
print("|---|---|---|---|---|---|---|---|")
best, us = {}, {}
for w in whats:
    op = "availability" if w == "reads" else "reserve"
    for r in rates:
        p = os.path.join(out, f"{w}-{r}.json")
        if not os.path.exists(p):
            continue
        j = json.load(open(p))
        h, o = j["harness"], j["operations"][op]
        cpu = h.get("cpu") or {}
        lagged = h["spoiled"]
        if not lagged:
            best[w] = max(best.get(w, 0), int(r))
        if cpu:
            us.setdefault(w, []).append(cpu["us_per_request"])
        print(f"| {w} | {int(r):,} | {o['sent']:,} | {cpu.get('us_per_request', float('nan')):.1f} "
              f"| {cpu.get('cores_used', float('nan')):.2f} | {h['send_lag_ms']['p99']:.2f} ms "
              f"| {'LAGGED' if lagged else 'no'} | {o['ok'] + sum(o.get('rejected', {}).values()):,} / "
              f"{o.get('shed', 0):,} / {o['errors']:,} |")
print()
for w in whats:
    if w not in us:
        continue
    m = sorted(us[w])[len(us[w]) // 2]
    line = (f"{w}: median {m:.1f} µs of harness CPU per request (one core at 100 %: "
            f"~{1e6 / m:,.0f}/s); highest rate offered without lag: "
            f"{best.get(w, 0):,}/s")
    if capacity and w == "writes":
        c = float(capacity)
        top = best.get(w, 0)
        line += (f"; that is {top / c:.1f}x the server's find-max {c:,.0f}/s "
                 f"({'>= 3x: ok' if top >= 3 * c else 'UNDER 3x'})")
    print(line)
print(f"\nreports: {out}")
PY
if [[ -n $PERF_RATE && -f $OUT/perf.data ]]; then
	echo
	echo "perf of the harness, writes at $PERF_RATE/s (self time, top 25): perf report -i $OUT/perf.data"
	perf report -i "$OUT/perf.data" --no-children --stdio --percent-limit 1 2>/dev/null |
		grep -E '^ +[0-9]' | head -25 || true
fi
