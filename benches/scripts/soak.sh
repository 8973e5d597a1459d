#!/usr/bin/env bash
# benches/scripts/soak.sh - the soak (issue 29): a whole sale against one deployment this
# script starts, reported per minute, with the server processes' RSS and CPU and a
# verdict on flatness.
#
# Usage: benches/scripts/soak.sh [embedded|kafka] [DURATION]
#   embedded   `flashsale serve --embedded --retention-secs 60` in a temporary data dir
#              (the default); watched: node
#   kafka      `flashsale engine --retention-secs 60`, `flashsale gateway` and
#              `flashsale projector` as separate processes on the running services of
#              .services.env (make services-up; or FLASHSALE_KAFKA and FLASHSALE_POSTGRES
#              in the environment), with fresh topics under a new prefix and
#              a new Postgres database; watched: engine, gateway, projector (and the
#              broker, when its pid is found)
#   DURATION   the measured phase: 30m (the default), 5m, 90s, 1h
# Environment:
#   SCALE=F    multiply every rate of benches/scenarios/soak.toml by F (0.25: a quarter)
#   OUT=DIR    where the reports go [a new temporary directory]
#   PORT=N     the HTTP port [18950]
#   BIN=PATH   the flashsale binary       [$CARGO_TARGET_DIR/release/flashsale]
#   BENCH=PATH the harness binary         [$CARGO_TARGET_DIR/release/flashsale-bench]
#              (both built in release mode when not given)
#   FLASHSALE_BENCH_CLIENT_THREADS=N, ... any other flag of flashsale-bench by its variable
#
# Writes DIR/soak.txt (the per-minute table, the verdict), DIR/soak.json, DIR/soak.html
# and the servers' logs, and prints where they are. Bounded: the server must be ready in
# 120 s, the run is cut off at DURATION + 5 minutes, and every process it started is
# stopped on exit (also on Ctrl-C). Exit: the harness's (0 clean, 1 correctness
# violations, 2 the run could not be done). Run it on an idle machine (`uptime`): the
# harness shares the cores with the server, so a busy box measures itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
case ${1:-} in -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
MODE=${1:-embedded} DURATION=${2:-30m}
[[ $MODE == embedded || $MODE == kafka ]] || { echo "soak: unknown mode '$MODE' (embedded, kafka; see --help)" >&2; exit 2; }
# DURATION in seconds, for the cut-off (the harness parses it again, with its own checks).
if [[ $DURATION =~ ^([0-9]+)(s|m|h)?$ ]]; then
	case ${BASH_REMATCH[2]} in h) SECS=$((BASH_REMATCH[1] * 3600)) ;; m) SECS=$((BASH_REMATCH[1] * 60)) ;; *) SECS=${BASH_REMATCH[1]} ;; esac
else
	echo "soak: DURATION must be a whole number of s, m or h (30m, 90s, 1h), got '$DURATION'" >&2
	exit 2
fi
((SECS >= 1 && SECS <= 3600)) || { echo "soak: DURATION must be 1 s to 1 h" >&2; exit 2; }
if [[ -z ${BIN:-} || -z ${BENCH:-} ]]; then
	export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flashsale-target}"
	cargo build --release --bin flashsale --bin flashsale-bench
	BIN=${BIN:-$CARGO_TARGET_DIR/release/flashsale}
	BENCH=${BENCH:-$CARGO_TARGET_DIR/release/flashsale-bench}
fi
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/flashsale-soak.XXXXXX")}
mkdir -p "$OUT"
PORT=${PORT:-18950} TOKEN=soak-bench TAG=soak$(date -u +%Y%m%d%H%M%S)$$
DATA=$(mktemp -d "${TMPDIR:-/tmp}/flashsale-soak-data.XXXXXX")
PIDS=() NAMES=() DB= PG=

cleanup() {
	local i
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		kill -TERM "${PIDS[i]}" 2>/dev/null || true
	done
	for p in "${PIDS[@]}"; do
		# Bounded: a process still there after 20 s is killed.
		for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
		kill -KILL "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	PIDS=()
	if [[ -n $DB ]]; then
		psql "$PG" -qc "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || echo "soak: could not drop database $DB" >&2
	fi
	if [[ $MODE == kafka && -n ${KAFKA:-} ]]; then
		# The run's topics go too (bounded: the admin tool gives up after its own timeout).
		timeout 60 bash ops/kafka/run-class.sh org.apache.kafka.tools.TopicCommand \
			--bootstrap-server "${KAFKA%%,*}" --delete --topic "${TAG}\\..*" >/dev/null 2>&1 ||
			echo "soak: could not delete the topics $TAG.*" >&2
	fi
	rm -rf "$DATA"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() { # name, command...
	local name=$1
	shift
	"$@" >"$OUT/$name.log" 2>&1 &
	PIDS+=($!) NAMES+=("$name")
}

wait_ready() {
	for _ in $(seq 600); do
		[[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/ready") == 200 ]] && return 0
		local i
		for i in "${!PIDS[@]}"; do
			kill -0 "${PIDS[i]}" 2>/dev/null && continue
			echo "soak: ${NAMES[i]} stopped:" >&2
			tail -5 "$OUT/${NAMES[i]}.log" >&2
			exit 2
		done
		sleep 0.2
	done
	echo "soak: the deployment was not ready within 120 s (logs in $OUT)" >&2
	exit 2
}

if [[ $MODE == embedded ]]; then
	start node "$BIN" serve --embedded --data-dir "$DATA" --retention-secs 60 \
		--listen "127.0.0.1:$PORT" --admin-token "$TOKEN" --log warn
else
	# The services: from the environment when set there, else from .services.env (read,
	# not exported: each process is given them by flag).
	read -r KAFKA PG < <( (set +u; [[ -z $FLASHSALE_KAFKA && -f .services.env ]] && . ./.services.env; echo "${FLASHSALE_KAFKA:-} ${FLASHSALE_POSTGRES:-}"))
	[[ -n ${KAFKA:-} && -n ${PG:-} ]] || { echo "soak: mode kafka needs FLASHSALE_KAFKA and FLASHSALE_POSTGRES (in the environment or .services.env): run make services-up" >&2; exit 2; }
	command -v psql >/dev/null || { echo "soak: mode kafka needs psql to create the run's database" >&2; exit 2; }
	psql "$PG" -v ON_ERROR_STOP=1 -qc "CREATE DATABASE $TAG" >/dev/null
	DB=$TAG
	DBURL=${PG%/*}/$TAG
	"$BIN" migrate --postgres "$DBURL" --log warn >"$OUT/migrate.log" 2>&1
	"$BIN" topics create --kafka "$KAFKA" --topic-prefix "$TAG." --partitions 8 \
		--replies-partitions 1 >"$OUT/topics.log" 2>&1
	start engine "$BIN" engine --kafka "$KAFKA" --postgres "$DBURL" --topic-prefix "$TAG." \
		--engine-group "$TAG" --data-dir "$DATA/engine" --retention-secs 60 --log warn
	start gateway "$BIN" gateway --kafka "$KAFKA" --postgres "$DBURL" --topic-prefix "$TAG." \
		--gateway-id 0 --data-dir "$DATA/gateway" --listen "127.0.0.1:$PORT" \
		--admin-token "$TOKEN" --log warn
	start projector "$BIN" projector --kafka "$KAFKA" --postgres "$DBURL" --topic-prefix "$TAG." --log warn
fi
wait_ready
WATCH=()
for i in "${!PIDS[@]}"; do WATCH+=(--watch-pid "${NAMES[i]}=${PIDS[i]}"); done
if [[ $MODE == kafka ]]; then
	# The broker's memory is part of the deployment's (read only: never signalled here).
	BROKER=$(pgrep -f 'kafka\.Kafka' | head -1 || true)
	[[ -n $BROKER ]] && WATCH+=(--watch-pid "broker=$BROKER")
fi
SCALE_ARGS=()
[[ -n ${SCALE:-} ]] && SCALE_ARGS=(--scale "$SCALE")
echo "soak: $MODE, $DURATION${SCALE:+ at ${SCALE}x}, reports in $OUT; $(uptime)" | tee "$OUT/uptime.txt" >&2
RC=0
timeout --signal=INT $((SECS + 300)) "$BENCH" --target "http://127.0.0.1:$PORT" --admin-token "$TOKEN" \
	--scenario benches/scenarios/soak.toml --duration "$DURATION" "${SCALE_ARGS[@]}" \
	--label "flashsale-$MODE soak" --progress plain "${WATCH[@]}" \
	--json-out "$OUT/soak.json" --html-out "$OUT/soak.html" >"$OUT/soak.txt" || RC=$?
echo "soak: $(uptime)" | tee -a "$OUT/uptime.txt" >&2
echo "data dir at the end: $(du -sh "$DATA" 2>/dev/null | cut -f1)" | tee -a "$OUT/soak.txt" >&2
grep -m1 '^verdict' "$OUT/soak.txt" >&2 || true
grep '^soak:' "$OUT/soak.txt" >&2 || true
echo "soak: the report: $OUT/soak.txt, $OUT/soak.json, $OUT/soak.html (exit $RC)" >&2
exit "$RC"
