#!/usr/bin/env bash
# benches/scripts/plan-check.sh - is the capacity plan right? (issue 34) Compares what
# `flashsale-bench plan --machines 1 --cores-per-machine 1` predicts with a find-max
# measured on one core, in one run.
#
# Usage: benches/scripts/plan-check.sh [--modes embedded,kafka] [--profile FILE]
#                                      [--no-2x2] [--out DIR] [--bin PATH] [--bench PATH]
#   make bench-plan                 # the same, defaults
#   --modes M       comma-separated: embedded, kafka [embedded,kafka]; kafka uses the
#                   broker and Postgres of the environment or .services.env
#                   (`make services-up`), and needs psql
#   --profile FILE  use this profile instead of taking a fresh one (~3-4 minutes)
#   --no-2x2        skip the 2 gateways + 2 engines deployment (kafka)
#   --out DIR       where the profile, plans, reports and logs go [a new temp directory]
#   --bin PATH      the flashsale binary [$CARGO_TARGET_DIR/release/flashsale]
#   --bench PATH    the harness binary  [$CARGO_TARGET_DIR/release/flashsale-bench]
#                   (both built in release mode when not given)
#
# Steps: (1) `flashsale-bench profile` (unpinned) unless --profile; (2) per deployment,
# `plan --machines 1 --cores-per-machine 1 --headroom 1 --services-elsewhere` with its
# gateway and engine counts; (3) per deployment, the processes pinned to core 0
# (`taskset -c 0`) and the harness to core 1 (`taskset -c 1`), find-max on
# benches/scenarios/capacity.toml (one hot SKU, no reads, reservation p99 <= 50 ms),
# started at half the prediction; (4) a table: predicted, measured, measured/predicted,
# and the issue's band (embedded and kafka 1+1 within +-20 %, kafka 2+2 within +-25 %).
# Deployments: embedded = `flashsale serve --embedded`; kafka 1+1 = `flashsale engine`,
# `gateway`, `projector`; kafka 2+2 = 2 engines, 2 gateways (the harness drives gateway
# 0; gateway 1 follows the events as every gateway does), 1 projector. The broker and
# Postgres are shared services and stay unpinned: the plan is asked with
# --services-elsewhere, so it predicts the flashsale processes' core alone.
# Needs 2 cores or more and taskset (util-linux). Run it on an idle machine (`uptime`):
# anything else on core 0 or 1 lowers the measurement. About 6-8 minutes in all.
# Exit 0 when every ratio is inside its band, 1 when one is outside, 2 when a step
# could not run.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODES=embedded,kafka PROFILE= TWO=1 OUT= BIN= BENCH=
while (($#)); do
	case $1 in
	--modes) MODES=$2; shift 2 ;;
	--profile) PROFILE=$2; shift 2 ;;
	--no-2x2) TWO=0; shift ;;
	--out) OUT=$2; shift 2 ;;
	--bin) BIN=$2; shift 2 ;;
	--bench) BENCH=$2; shift 2 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "plan-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done
IFS=, read -r -a MODE_LIST <<<"$MODES"
for m in "${MODE_LIST[@]}"; do
	[[ $m == embedded || $m == kafka ]] || { echo "plan-check: unknown mode '$m'" >&2; exit 2; }
done
command -v taskset >/dev/null || { echo "plan-check: needs taskset (util-linux)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "plan-check: needs python3 for the table" >&2; exit 2; }
(($(nproc) >= 2)) || { echo "plan-check: needs 2 cores (deployment on 0, harness on 1)" >&2; exit 2; }
if [[ -z $BIN || -z $BENCH ]]; then
	export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flashsale-target}"
	cargo build --release --bin flashsale --bin flashsale-bench
	BIN=${BIN:-$CARGO_TARGET_DIR/release/flashsale}
	BENCH=${BENCH:-$CARGO_TARGET_DIR/release/flashsale-bench}
fi
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/flashsale-plan-check.XXXXXX")}
mkdir -p "$OUT"
read -r KAFKA PG < <( (set +u; [[ -z $FLASHSALE_KAFKA && -f .services.env ]] && . ./.services.env; echo "${FLASHSALE_KAFKA:-} ${FLASHSALE_POSTGRES:-}"))
if [[ ,$MODES, == *,kafka,* ]]; then
	[[ -n ${KAFKA:-} && -n ${PG:-} ]] || { echo "plan-check: mode kafka needs FLASHSALE_KAFKA and FLASHSALE_POSTGRES (environment or .services.env): make services-up" >&2; exit 2; }
	command -v psql >/dev/null || { echo "plan-check: mode kafka needs psql" >&2; exit 2; }
fi
PORT=${FLASHSALE_BENCH_PORT:-18960} TOKEN=plan-check-token
PIDS=() DB= DATA=
stop_all() {
	local p
	for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
		kill -KILL "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	PIDS=()
	if [[ -n $DB ]]; then psql "$PG" -qc "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true; fi
	DB=
	[[ -z $DATA ]] || rm -rf "$DATA"
	DATA=
}
trap stop_all EXIT
trap 'exit 130' INT TERM
start() { # log name, command... (pinned to core 0)
	local name=$1
	shift
	taskset -c 0 "$@" >"$OUT/$name.log" 2>&1 &
	PIDS+=($!)
}
wait_ready() { # port
	for _ in $(seq 600); do
		[[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/ready") == 200 ]] && return 0
		sleep 0.2
	done
	echo "plan-check: nothing ready on port $1 within 120 s (logs in $OUT)" >&2
	exit 2
}
deploy() { # embedded | kafka GATEWAYS ENGINES
	DATA=$(mktemp -d "${TMPDIR:-/tmp}/flashsale-plan-check-data.XXXXXX")
	if [[ $1 == embedded ]]; then
		start embedded "$BIN" serve --embedded --data-dir "$DATA" --partitions 8 \
			--listen "127.0.0.1:$PORT" --admin-token "$TOKEN" --log warn
		wait_ready "$PORT"
		return
	fi
	local g=$2 e=$3 tag i
	tag=fsplan$$_$(date +%H%M%S)_$g$e
	psql "$PG" -v ON_ERROR_STOP=1 -qc "CREATE DATABASE $tag" >/dev/null
	DB=$tag
	local db=${PG%/*}/$tag
	"$BIN" migrate --postgres "$db" --log warn >"$OUT/$tag-migrate.log" 2>&1
	"$BIN" topics create --kafka "$KAFKA" --topic-prefix "$tag." --partitions 8 \
		--replies-partitions "$g" >"$OUT/$tag-topics.log" 2>&1
	for ((i = 0; i < e; i++)); do
		start "$tag-engine$i" "$BIN" engine --kafka "$KAFKA" --postgres "$db" --topic-prefix "$tag." \
			--engine-group "$tag" --data-dir "$DATA/engine$i" --log warn
	done
	for ((i = 0; i < g; i++)); do
		start "$tag-gateway$i" "$BIN" gateway --kafka "$KAFKA" --postgres "$db" --topic-prefix "$tag." \
			--gateway-id "$i" --data-dir "$DATA/gateway$i" --listen "127.0.0.1:$((PORT + i))" \
			--admin-token "$TOKEN" --log warn
	done
	start "$tag-projector" "$BIN" projector --kafka "$KAFKA" --postgres "$db" --topic-prefix "$tag." --log warn
	for ((i = 0; i < g; i++)); do wait_ready $((PORT + i)); done
	sleep 3 # the engines' consumer group settles
}
predict() { # name, plan flags...
	local name=$1
	shift
	"$BENCH" plan --profile "$OUT/profile.json" --machines 1 --cores-per-machine 1 --headroom 1 \
		--services-elsewhere "$@" --json-out "$OUT/$name-plan.json" >"$OUT/$name-plan.txt"
}
measure() { # name, mode, start rate
	local rc=0
	taskset -c 1 "$BENCH" --target "http://127.0.0.1:$PORT" --admin-token "$TOKEN" --progress off \
		--client-threads 1 --scenario benches/scenarios/capacity.toml --find-max --slo-p99-ms 50 \
		--find-max-start "$3" --find-max-factor 1.2 --find-max-step-secs 3 --find-max-steps 8 \
		--find-max-refine 2 --sku-prefix PC --label "$1" \
		--json-out "$OUT/$1-max.json" >"$OUT/$1-max.txt" 2>&1 || rc=$?
	((rc < 2)) || { echo "plan-check: $1: the find-max could not run:" >&2; tail -5 "$OUT/$1-max.txt" >&2; exit 2; }
}
start_rate() { # name: half the prediction, at least 100/s
	python3 -c 'import json,sys; p=json.load(open(sys.argv[1]))["modes"][sys.argv[2]]; print(max(100, round(p["predicted_max_holds_per_s"] / 2)))' \
		"$OUT/$1-plan.json" "$2"
}
echo "plan-check: reports in $OUT; $(uptime)" | tee "$OUT/uptime.txt" >&2
if [[ -z $PROFILE ]]; then
	echo "plan-check: taking a fresh profile ($MODES)" >&2
	"$BENCH" profile --modes "$MODES" --bin "$BIN" --kafka "${KAFKA:-127.0.0.1:19092}" \
		${PG:+--postgres "$PG"} --out "$OUT/profile-logs" --json-out "$OUT/profile.json" \
		>"$OUT/profile.txt"
else
	cp "$PROFILE" "$OUT/profile.json"
fi
CASES=()
for m in "${MODE_LIST[@]}"; do
	if [[ $m == embedded ]]; then
		CASES+=("embedded:embedded:1:1")
	else
		CASES+=("kafka-1+1:kafka:1:1")
		((TWO)) && CASES+=("kafka-2+2:kafka:2:2")
	fi
done
for c in "${CASES[@]}"; do
	IFS=: read -r name mode g e <<<"$c"
	predict "$name" --mode "$mode" --gateways "$g" --engines "$e"
	rate=$(start_rate "$name" "$mode")
	echo "plan-check: $name: predicted $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["modes"][sys.argv[2]]["predicted_max_holds_per_s"])' "$OUT/$name-plan.json" "$mode")/s; find-max from $rate/s" >&2
	if [[ $mode == embedded ]]; then deploy embedded; else deploy kafka "$g" "$e"; fi
	measure "$name" "$mode" "$rate"
	stop_all
done
echo "plan-check: $(uptime)" | tee -a "$OUT/uptime.txt" >&2
python3 - "$OUT" "${CASES[@]}" <<'PY'
import json, os, sys
out, cases = sys.argv[1], sys.argv[2:]
bad = 0
print("| deployment (1 core) | predicted holds/s | measured find-max (p99 <= 50 ms) | measured / predicted | band |")
print("|---|---|---|---|---|")
for c in cases:
    name, mode, g, e = c.split(":")
    pred = json.load(open(os.path.join(out, f"{name}-plan.json")))["modes"][mode]["predicted_max_holds_per_s"]
    r = json.load(open(os.path.join(out, f"{name}-max.json")))
    fm = r["find_max"]
    held = fm["max_rate_held_per_s"]
    band = 0.25 if name.endswith("2+2") else 0.20
    if held is None or pred <= 0:
        print(f"| {name} | {pred:,.0f} | none held | - | +-{band:.0%} |")
        bad += 1
        continue
    ratio = held / pred
    note = " (step limit: more)" if fm.get("step_limit_reached") else ""
    ok = abs(ratio - 1) <= band
    bad += 0 if ok else 1
    spoiled = " (harness lagged)" if r.get("harness", {}).get("spoiled") else ""
    print(f"| {name} | {pred:,.0f} | {held:,.0f}{note}{spoiled} | {ratio:.2f} | +-{band:.0%} {'ok' if ok else 'OUTSIDE'} |")
print(f"\nreports: {out}")
sys.exit(1 if bad else 0)
PY
