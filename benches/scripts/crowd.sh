#!/usr/bin/env bash
# benches/scripts/crowd.sh - the 10:00 crowd (issues 12 and 31), both modes side by side
# in one run, against the issue's targets, measured PINNED: each deployment on its own
# cores, the harness on the others.
#
# Usage: benches/scripts/crowd.sh [--modes embedded,kafka] [--flash-runs N] [--out DIR]
#                                 [--bin PATH] [--bench PATH]
#                                 [--server-cpus LIST] [--harness-cpus LIST]
#                                 [--no-pin-broker] [--no-pin]
#   --modes M          comma-separated: embedded, kafka [embedded,kafka]; kafka uses the
#                      broker of .services.env (`make services-up`)
#   --flash-runs N     flash-crowd.toml runs in a row on one server [2]
#   --out DIR          where the reports go [a new temporary directory]
#   --bin PATH         the flashsale binary   [$CARGO_TARGET_DIR/release/flashsale]
#   --bench PATH       the harness binary     [$CARGO_TARGET_DIR/release/flashsale-bench]
#                      (both built in release mode when not given)
#   --server-cpus L    the cores of the deployment (taskset list) [0]
#   --harness-cpus L   the cores of the harness [1]; it runs one thread per core given
#                      (`--client-threads`), so one core is one current-thread runtime
#   --no-pin-broker    Kafka mode: leave the broker's affinity alone (by default the
#                      running broker is moved onto the server's cores for each Kafka run
#                      with `taskset -a -p`, and its previous affinity is put back after
#                      it, also on Ctrl-C or an error)
#   --no-pin           no taskset at all (the old, shared-cores measurement; the table
#                      says "not pinned")
#
# Pinned is the standard: on a 2-core machine the harness beside the server takes CPU the
# server needs, so 2x find-max asks for CPU that is not there and measures the harness.
# With the defaults the server (and in Kafka mode the broker too) runs on core 0 and the
# harness on core 1. The broker is shared with whatever else uses it: while it is pinned
# to core 0, other clients of it are slowed down too.
#
# For each mode, in turn:
#   server 1 (fresh): benches/scenarios/flash-crowd.toml N times in a row, then
#                     benches/scenarios/big-crowd.toml (harness --max-in-flight 4096);
#   server 2 (fresh): benches/scenarios/capacity.toml --find-max (p99 <= 50 ms; from
#                     2,000/s, Kafka mode from 500/s, x1.4 per step), then
#                     benches/scenarios/overload.toml --capacity-from that report (2x).
# Servers: `flashsale serve --partitions 8` (embedded in a temporary data dir, or
# `--kafka` with fresh topics under a new prefix), 127.0.0.1:${FLASHSALE_BENCH_PORT:-18900}.
# Every report is kept in DIR as <mode>-<scenario>.json / .txt, the cores in
# DIR/pinning.txt; the table at the end is read from them: the cores of each side, the
# harness's own send lag and CPU per request, and the harness's own verdict (a run whose
# harness lagged is marked "spoiled": its figures measure the harness, not the server).
# Exits 1 if any run found a correctness violation (oversell, a user over its limit), 2
# if a server or a run could not be started. About 3 minutes per mode. Run it on an
# otherwise idle machine (`uptime` is recorded before and after).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODES=embedded,kafka FLASH_RUNS=2 OUT= BIN= BENCH=
SERVER_CPUS=0 HARNESS_CPUS=1 PIN=1 PIN_BROKER=1
while (($#)); do
	case $1 in
	--server-cpus) SERVER_CPUS=$2; shift 2 ;;
	--harness-cpus) HARNESS_CPUS=$2; shift 2 ;;
	--no-pin-broker) PIN_BROKER=0; shift ;;
	--no-pin) PIN=0 PIN_BROKER=0; shift ;;
	--modes) MODES=$2; shift 2 ;;
	--flash-runs) FLASH_RUNS=$2; shift 2 ;;
	--out) OUT=$2; shift 2 ;;
	--bin) BIN=$2; shift 2 ;;
	--bench) BENCH=$2; shift 2 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "crowd: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done
[[ $FLASH_RUNS =~ ^[1-9][0-9]?$ ]] || { echo "crowd: --flash-runs must be 1..99" >&2; exit 2; }
IFS=, read -r -a MODE_LIST <<<"$MODES"
for m in "${MODE_LIST[@]}"; do
	[[ $m == embedded || $m == kafka ]] || { echo "crowd: unknown mode '$m' (embedded, kafka)" >&2; exit 2; }
done
command -v python3 >/dev/null || { echo "crowd: python3 is needed for the table" >&2; exit 2; }
# A taskset list: numbers and ranges, comma-separated ("0", "0-1", "0,2").
cpu_count() { # list -> number of cores in it (0 when malformed)
	python3 - "$1" <<'PY'
import os, re, sys
l = sys.argv[1]
if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", l):
    print(0); sys.exit()
cpus = set()
for part in l.split(","):
    a, _, b = part.partition("-")
    cpus.update(range(int(a), int(b or a) + 1))
print(len(cpus) if cpus <= os.sched_getaffinity(0) else 0)
PY
}
PIN_SERVER=() PIN_HARNESS=() CLIENT_THREADS=1
if ((PIN)); then
	command -v taskset >/dev/null || { echo "crowd: taskset (util-linux) is needed to pin; or --no-pin" >&2; exit 2; }
	for l in "$SERVER_CPUS" "$HARNESS_CPUS"; do
		(($(cpu_count "$l") > 0)) || { echo "crowd: '$l' is not a list of cores this machine has (e.g. 0, 0-1, 0,2)" >&2; exit 2; }
	done
	(($(cpu_count "$SERVER_CPUS,$HARNESS_CPUS") == $(cpu_count "$SERVER_CPUS") + $(cpu_count "$HARNESS_CPUS"))) ||
		{ echo "crowd: --server-cpus $SERVER_CPUS and --harness-cpus $HARNESS_CPUS overlap" >&2; exit 2; }
	PIN_SERVER=(taskset -c "$SERVER_CPUS") PIN_HARNESS=(taskset -c "$HARNESS_CPUS")
	CLIENT_THREADS=$(cpu_count "$HARNESS_CPUS")
fi
if [[ -z $BIN || -z $BENCH ]]; then
	export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flashsale-target}"
	cargo build --release --bin flashsale --bin flashsale-bench
	BIN=${BIN:-$CARGO_TARGET_DIR/release/flashsale}
	BENCH=${BENCH:-$CARGO_TARGET_DIR/release/flashsale-bench}
fi
BROKERS=
if [[ ,$MODES, == *,kafka,* ]]; then
	# Read, not exported: the server is given the broker by flag.
	BROKERS=$( (set +u; [[ -f .services.env ]] && . ./.services.env; echo "${FLASHSALE_KAFKA:-}"))
	[[ -n $BROKERS ]] || { echo "crowd: mode kafka needs FLASHSALE_KAFKA in .services.env: run make services-up" >&2; exit 2; }
fi
BROKER_PIDS=()
if [[ ,$MODES, == *,kafka,* ]] && ((PIN_BROKER)); then
	read -r -a BROKER_PIDS <<<"$( (set -a; . ./.services.env; set +a; ops/kafka/start.sh --pids) || true)"
	for b in "${BROKER_PIDS[@]}"; do
		[[ $b =~ ^[0-9]+$ ]] || { echo "crowd: a broker of .services.env does not run (ops/kafka/start.sh --pids: ${BROKER_PIDS[*]}); or --no-pin-broker" >&2; exit 2; }
	done
	((${#BROKER_PIDS[@]})) || { echo "crowd: no broker pid from ops/kafka/start.sh --pids; or --no-pin-broker" >&2; exit 2; }
fi
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/flashsale-crowd.XXXXXX")}
mkdir -p "$OUT"
PORT=${FLASHSALE_BENCH_PORT:-18900} TOKEN=crowd-bench SC=benches/scenarios
PID= DATA= VIOLATIONS=() BROKER_PREV=()
# The broker is shared: pinned for the Kafka runs only, its previous affinity (every
# thread's, as `taskset -c -p` lists the main thread's) put back after them and on exit.
pin_broker() {
	((${#BROKER_PIDS[@]})) || return 0
	local b prev
	for b in "${BROKER_PIDS[@]}"; do
		prev=$(taskset -c -p "$b" | sed 's/.*: *//')
		BROKER_PREV+=("$b=$prev")
		taskset -a -c -p "$SERVER_CPUS" "$b" >/dev/null
		echo "crowd: broker $b pinned to cores $SERVER_CPUS (was $prev)" >&2
	done
}
unpin_broker() {
	local e
	for e in "${BROKER_PREV[@]}"; do
		taskset -a -c -p "${e#*=}" "${e%%=*}" >/dev/null 2>&1 &&
			echo "crowd: broker ${e%%=*} back on cores ${e#*=}" >&2 ||
			echo "crowd: could not restore broker ${e%%=*} to cores ${e#*=} (gone?)" >&2
	done
	BROKER_PREV=()
}
stop_server() {
	[[ -n $PID ]] || return 0
	kill -TERM "$PID" 2>/dev/null || true
	wait "$PID" 2>/dev/null || true
	PID=
	[[ -z $DATA ]] || rm -rf "$DATA"
	DATA=
}
trap 'stop_server; unpin_broker' EXIT
trap 'exit 130' INT TERM
start_server() { # mode, log name
	local mode=$1 args
	if [[ $mode == kafka ]]; then
		args=(--kafka "$BROKERS" --prefix "crowd-$(date +%s)-$$.")
	else
		DATA=$(mktemp -d "${TMPDIR:-/tmp}/flashsale-crowd-data.XXXXXX")
		args=(--embedded --data-dir "$DATA")
	fi
	"${PIN_SERVER[@]}" "$BIN" serve "${args[@]}" --partitions 8 --listen "127.0.0.1:$PORT" \
		--admin-token "$TOKEN" --log warn >"$OUT/$2.log" 2>&1 &
	PID=$!
	for _ in $(seq 600); do
		[[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/ready") == 200 ]] && return 0
		kill -0 "$PID" 2>/dev/null || { echo "crowd: the $mode server stopped:" >&2; tail -5 "$OUT/$2.log" >&2; exit 2; }
		sleep 0.2
	done
	echo "crowd: the $mode server was not ready within 120 s:" >&2
	tail -5 "$OUT/$2.log" >&2
	exit 2
}
run() { # report name, harness arguments...
	local name=$1 rc=0
	shift
	printf 'crowd: %-22s ' "$name" >&2
	"${PIN_HARNESS[@]}" "$BENCH" --target "http://127.0.0.1:$PORT" --admin-token "$TOKEN" --progress off \
		--client-threads "$CLIENT_THREADS" \
		--json-out "$OUT/$name.json" "$@" >"$OUT/$name.txt" 2>&1 || rc=$?
	# Exit 1: the run found correctness violations (oversell, a user over its limit; the
	# report lists them); 2: the run could not be done. A missed latency target is exit 0
	# (the verdict line says so).
	if ((rc == 1)); then
		VIOLATIONS+=("$name")
		echo "VIOLATIONS (see $OUT/$name.txt)" >&2
		return 0
	fi
	if ((rc >= 2)); then
		echo "could not run (exit $rc):" >&2
		tail -5 "$OUT/$name.txt" >&2
		exit 2
	fi
	grep -m1 '^verdict' "$OUT/$name.txt" >&2 || echo "done" >&2
}
echo "crowd: $(uptime)" | tee "$OUT/uptime.txt" >&2
if ((PIN)); then
	broker=; ((${#BROKER_PIDS[@]})) && broker=" (Kafka mode: and the broker)"
	((${#BROKER_PIDS[@]})) || [[ ,$MODES, != *,kafka,* ]] || broker=" (Kafka mode: the broker NOT pinned)"
	echo "server cores $SERVER_CPUS$broker; harness cores $HARNESS_CPUS, $CLIENT_THREADS thread(s)" >"$OUT/pinning.txt"
else
	echo "not pinned: server, broker and harness share every core" >"$OUT/pinning.txt"
fi
echo "crowd: $(cat "$OUT/pinning.txt")" >&2
for m in "${MODE_LIST[@]}"; do
	[[ $m != kafka ]] || pin_broker
	start_server "$m" "$m-server-1"
	for i in $(seq "$FLASH_RUNS"); do
		run "$m-flash-$i" --scenario "$SC/flash-crowd.toml" --sku-prefix "FC$i"
	done
	run "$m-big" --scenario "$SC/big-crowd.toml" --sku-prefix BIG --max-in-flight 4096
	stop_server
	start_server "$m" "$m-server-2"
	# Kafka mode starts lower: a search whose first step fails finds nothing (pinned
	# with its broker on one core it held ~300/s before issue 31).
	start=2000 steps=8
	[[ $m != kafka ]] || start=500 steps=10
	run "$m-max" --scenario "$SC/capacity.toml" --find-max --slo-p99-ms 50 --sku-prefix MAX \
		--find-max-start "$start" --find-max-factor 1.4 --find-max-step-secs 3 \
		--find-max-steps "$steps" --find-max-refine 1
	if python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["find_max"]["max_rate_held_per_s"] else 1)' "$OUT/$m-max.json"; then
		run "$m-overload" --scenario "$SC/overload.toml" --capacity-from "$OUT/$m-max.json" --sku-prefix OVL
	else
		echo "crowd: $m: find-max held no rate; overload skipped" >&2
	fi
	stop_server
	[[ $m != kafka ]] || unpin_broker
done
echo "crowd: $(uptime)" | tee -a "$OUT/uptime.txt" >&2
python3 - "$OUT" "$FLASH_RUNS" "${MODE_LIST[@]}" <<'PY'
import json, os, sys
out, runs, modes = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def load(name):
    p = os.path.join(out, name + ".json")
    return json.load(open(p)) if os.path.exists(p) else None
def ms(v):
    # None: the report has no such figure (e.g. a crowd that never sold out)
    if v is None:
        return "none"
    return f"{v:,.1f} ms" if v < 100 else f"{v:,.0f} ms"
def spoiled(r):
    return " (spoiled)" if r["harness"]["spoiled"] else ""
def harness(r):
    h = r.get("harness") or {}
    lag = h.get("send_lag_ms", {}).get("p99")
    cpu = h.get("cpu") or {}
    out = f"lag p99 {ms(lag)}" if lag is not None else "lag ?"
    if cpu:
        out += f", {cpu['us_per_request']:.1f} µs/req, {cpu['cores_used']:.2f} cores"
        if cpu.get("cpus_allowed"):
            out += f" on CPU {cpu['cpus_allowed']}"
    return out + (" SPOILED" if h.get("spoiled") else "")
def cell(mode, what):
    if what in ("lag_flash", "lag_max", "lag_ovl"):
        r = load(f"{mode}-" + {"lag_flash": "flash-1", "lag_max": "max", "lag_ovl": "overload"}[what])
        return harness(r) if r else "-"
    if what in ("res", "avail", "held"):
        vals = []
        for i in range(1, runs + 1):
            r = load(f"{mode}-flash-{i}")
            if not r:
                continue
            if what == "res":
                vals.append(ms(r["operations"]["reserve"]["latency_ms"]["p99"]) + spoiled(r))
            elif what == "avail":
                vals.append(ms(r["operations"]["availability"]["latency_ms"]["p99"]))
            else:
                c = r["crowd"]
                vals.append(f"{c['held']:,}+{c['decided_409']:,} of {c['buyers']:,}, sold out {ms(c['sold_out_after_ms'])}")
        return " / ".join(vals) or "-"
    if what == "big":
        r = load(f"{mode}-big")
        if not r:
            return "-"
        c = r["crowd"]
        answered = c["buyers"] - c["not_answered"]
        return f"{answered:,} of {c['buyers']:,}; {ms(c['sold_out_after_ms'])}{spoiled(r)}"
    if what == "max":
        r = load(f"{mode}-max")
        if not r:
            return "-"
        held = r["find_max"]["max_rate_held_per_s"]
        return (f"{held:,.0f}/s" if held else "none held") + spoiled(r)
    r, m = load(f"{mode}-overload"), load(f"{mode}-max")
    if not r or not m or not m["find_max"]["max_rate_held_per_s"]:
        return "-"
    cap = m["find_max"]["max_rate_held_per_s"]
    o = r["operations"]["reserve"]
    if what == "good":
        return f"{o['goodput_per_s']:,.0f}/s ({100 * o['goodput_per_s'] / cap:.0f} %){spoiled(r)}"
    if what == "adm":
        return ms(o["admitted_latency_ms"]["p99"])
    return f"{ms(o['shed_latency_ms']['p99'])} ({o['shed_per_s']:,.0f}/s shed, {o['shed_without_retry_after']} without Retry-After)"
rows = [
    ("flash crowd: reserve p99, run by run", "<= 50 ms", "res"),
    ("flash crowd: availability p99", "<= 20 ms", "avail"),
    ("flash crowd: held + out of stock, units sold out after", "", "held"),
    ("big crowd: buyers answered; 1,000 units held after", "all; <= 1 s", "big"),
    ("capacity (find-max, p99 <= 50 ms)", "", "max"),
    ("overload 2x, 30 s: goodput (of capacity)", ">= 90 %", "good"),
    ("overload: admitted p99", "<= 100 ms", "adm"),
    ("overload: shed p99", "<= 20 ms", "shed"),
    ("harness: flash crowd 1 (send lag, CPU)", "lag p99 <= 5 ms", "lag_flash"),
    ("harness: find-max best step", "lag p99 <= 5 ms", "lag_max"),
    ("harness: overload 2x", "lag p99 <= 5 ms", "lag_ovl"),
]
pin = open(os.path.join(out, "pinning.txt")).read().strip() if os.path.exists(os.path.join(out, "pinning.txt")) else "?"
print()
print(f"cores: {pin}")
print("a run marked spoiled had a harness that lagged (send lag p99 > 5 ms or > 1/4 of the p99): its figures measure the harness")
print()
print("| figure | target | " + " | ".join(modes) + " |")
print("|---|---|" + "---|" * len(modes))
for label, target, what in rows:
    print(f"| {label} | {target} | " + " | ".join(cell(m, what) for m in modes) + " |")
print(f"\nreports: {out}")
PY
if ((${#VIOLATIONS[@]})); then
	echo "crowd: correctness violations in: ${VIOLATIONS[*]}" >&2
	exit 1
fi
echo "crowd: no oversell and no user over its limit in any run" >&2
