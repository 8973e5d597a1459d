#!/usr/bin/env bash
# benches/scripts/gateway-startup.sh - gateway start -> /ready with a long events topic
# (issue 13: target <= 2 s with 10,000,000 records in events).
#
# Usage: benches/scripts/gateway-startup.sh [--records N] [--partitions P] [--debug]
#   --records N     event records to put in events [10000000]
#   --partitions P  partitions of the fresh topics [8]
#   --debug         use the debug binaries (a check that the script works; the figures
#                   are for release builds only)
#
# Needs Kafka: FLASHSALE_KAFKA, else <repo>/.services.env (make services-up). On fresh
# topics (prefix fsstart<time>.), it:
#   1. fills events with N synthetic but valid records (flashsale-bench fill-events: the
#      proto encoder; holds that expire and are pruned, so the read model stays bounded);
#   2. starts `flashsale gateway` (read-model snapshots in a data dir of its own, under
#      <repo>/.bench-startup/), times start -> /ready (the full replay), waits for the
#      snapshot it writes once caught up, stops it;
#   3. starts it again and times start -> /ready (from the snapshot);
#   4. deletes the topics and the data dir.
# Prints both times. The gateway listens on 127.0.0.1:$FLASHSALE_BENCH_PORT [18180]. Run it on an otherwise idle machine: a busy one measures the
# neighbours too. Builds what it runs (release unless --debug) with CARGO_TARGET_DIR
# (default ~/.cache/flashsale-target).
set -euo pipefail
cd "$(dirname "$0")/../.."
RECORDS=10000000 PARTITIONS=8 PROFILE=release
while (($#)); do
	case $1 in
	--records) RECORDS=$2; shift 2 ;;
	--partitions) PARTITIONS=$2; shift 2 ;;
	--debug) PROFILE=debug; shift ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "gateway-startup: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done
if [[ -z ${FLASHSALE_KAFKA:-} && -f .services.env ]]; then
	set -a
	# shellcheck disable=SC1091
	. ./.services.env
	set +a
fi
[[ -n ${FLASHSALE_KAFKA:-} ]] || { echo "gateway-startup: no FLASHSALE_KAFKA; run make services-up first" >&2; exit 2; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flashsale-target}"
flags=()
[[ $PROFILE == release ]] && flags=(--release)
cargo build "${flags[@]}" --bin flashsale --bin flashsale-bench
BIN=$CARGO_TARGET_DIR/$PROFILE
PREFIX="fsstart$(date +%s)."
DATA="$PWD/.bench-startup/$PREFIX"
PORT=${FLASHSALE_BENCH_PORT:-18180}
GW= MS=
cleanup() {
	[[ -z $GW ]] || kill "$GW" 2>/dev/null || true
	bash ops/kafka/run-class.sh org.apache.kafka.tools.TopicCommand \
		--bootstrap-server "${FLASHSALE_KAFKA%%,*}" --delete --topic "${PREFIX//./\\.}.*" >/dev/null 2>&1 || true
	rm -rf "$DATA"
	rmdir "$PWD/.bench-startup" 2>/dev/null || true
}
trap cleanup EXIT
env -u FLASHSALE_POSTGRES "$BIN/flashsale" topics create --kafka "$FLASHSALE_KAFKA" --topic-prefix "$PREFIX" \
	--partitions "$PARTITIONS" --replies-partitions 1
"$BIN/flashsale-bench" fill-events --kafka "$FLASHSALE_KAFKA" --topic-prefix "$PREFIX" --records "$RECORDS"
mkdir -p "$DATA"

# start_gateway NAME: start it (pid in GW), set MS to the milliseconds from start to
# /ready 200. Not in a subshell: stop_gateway needs GW.
start_gateway() {
	local t0 t1
	if curl -s -o /dev/null "http://127.0.0.1:$PORT/health"; then
		echo "gateway-startup: 127.0.0.1:$PORT is in use; set FLASHSALE_BENCH_PORT" >&2
		return 1
	fi
	t0=$(date +%s%N)
	env -u FLASHSALE_POSTGRES "$BIN/flashsale" gateway --kafka "$FLASHSALE_KAFKA" --topic-prefix "$PREFIX" \
		--listen "127.0.0.1:$PORT" --admin-token bench --data-dir "$DATA" \
		>"$DATA/$1.out" 2>"$DATA/$1.log" &
	GW=$!
	for _ in $(seq 1 36000); do
		if [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/ready") == 200 ]]; then
			t1=$(date +%s%N)
			MS=$(((t1 - t0) / 1000000))
			return 0
		fi
		kill -0 "$GW" 2>/dev/null || { echo "gateway-startup: the gateway exited; see $DATA/$1.log" >&2; tail -5 "$DATA/$1.log" >&2; return 1; }
		sleep 0.05
	done
	echo "gateway-startup: not ready within 30 min" >&2
	return 1
}
stop_gateway() {
	kill -TERM "$GW" 2>/dev/null || true
	wait "$GW" 2>/dev/null || true
	GW=
	# the port is free again before the next start
	for _ in $(seq 1 100); do
		curl -s -o /dev/null "http://127.0.0.1:$PORT/health" || break
		sleep 0.1
	done
}

start_gateway full
full=$MS
echo "gateway-startup: full replay of $RECORDS records: start -> ready in ${full} ms"
for _ in $(seq 1 1200); do
	grep -q 'read-model snapshot written' "$DATA/full.log" && break
	sleep 0.5
done
grep -q 'read-model snapshot written' "$DATA/full.log" || { echo "gateway-startup: no snapshot written; see $DATA/full.log" >&2; exit 1; }
stop_gateway
start_gateway snapshot
snap=$MS
stop_gateway
echo "gateway-startup: from the snapshot: start -> ready in ${snap} ms (full replay: ${full} ms; $RECORDS records, $PARTITIONS partitions, $PROFILE build)"
grep -h 'read model starts from a snapshot\|read model caught up' "$DATA/snapshot.log" | tail -2
