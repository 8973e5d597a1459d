#!/usr/bin/env bash
# ops/services-up.sh - start the real services the tests need, on 127.0.0.1, no Docker:
# PostgreSQL 15 first (ops/postgres/start.sh), then Apache Kafka 4.x (ops/kafka/start.sh):
# one broker, or with FLASHSALE_KAFKA_BROKERS=3 a 3-broker KRaft cluster (one JVM each,
# 384m heap, replication factor 3, min.insync.replicas 2).
#
# Usage: ops/services-up.sh [--help]
#        FLASHSALE_KAFKA_BROKERS=3 ops/services-up.sh   (or: FLASHSALE_KAFKA_BROKERS=3 make services-up)
#
# Writes <repo>/.services.env (KEY=VALUE lines) and prints the same lines on stdout:
#   FLASHSALE_KAFKA=127.0.0.1:19092
#   FLASHSALE_POSTGRES=postgres://postgres@127.0.0.1:15432/flashsale
#   FLASHSALE_SERVICES_DIR=...   (+ the ports and dirs, so services-down.sh finds them)
# With FLASHSALE_KAFKA_BROKERS=3 (ports: broker i listens on FLASHSALE_KAFKA_PORT+10*(i-1),
# controller FLASHSALE_KAFKA_CONTROLLER_PORT+10*(i-1); dirs <state dir>/kafka/broker-i):
#   FLASHSALE_KAFKA=127.0.0.1:19092,127.0.0.1:19102,127.0.0.1:19112   (broker-id order)
#   FLASHSALE_KAFKA_BROKERS=3
#   FLASHSALE_KAFKA_BROKER_PIDS="4101 4102 4103"   (broker-id order; the one quoted value)
#   FLASHSALE_KAFKA_BROKER_<i>_PORT / _CONTROLLER_PORT / _DIR / _PID   for i = 1..3
# Load it with `set -a; . ./.services.env; set +a`.
# Idempotent: services already running are kept (a cluster with a dead broker gets it
# started again). If one fails to start, what this run started is stopped again and the
# exit status is non-zero.
#
# Environment (defaults in brackets):
#   FLASHSALE_SERVICES_DIR  state dirs: postgres/ and kafka/ inside [<repo>/.services]
#   FLASHSALE_SERVICES_ENV  env file to write [<repo>/.services.env]
#   FLASHSALE_KAFKA_BROKERS [1] (1, or 3 for a replicated cluster)
#   FLASHSALE_PG_PORT [15432], FLASHSALE_KAFKA_PORT [19092],
#   FLASHSALE_KAFKA_CONTROLLER_PORT [19093], and the rest of the variables of
#   ops/postgres/start.sh and ops/kafka/start.sh (see their --help).
# Logs: <state dir>/postgres/postgres.log, <state dir>/kafka/logs/server.log
# (a cluster: <state dir>/kafka/broker-i/logs/server.log).
# Kill and restart one broker of the cluster (a test): kill -9 the pid from
# FLASHSALE_KAFKA_BROKER_PIDS, then, with .services.env loaded,
#   FLASHSALE_KAFKA_BROKER_ID=2 ops/kafka/start.sh
# Stop with ops/services-down.sh.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034 # read by lib.sh
OPS_NAME=services-up
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"

for arg in "$@"; do
	case $arg in
	-h | --help)
		usage_from_header "${BASH_SOURCE[0]}"
		exit 0
		;;
	*) die "unknown argument: $arg (see --help)" ;;
	esac
done

REPO=$(cd "$HERE/.." && pwd)
SERVICES_DIR=$(abs_path "${FLASHSALE_SERVICES_DIR:-$REPO/.services}")
ENV_FILE=$(abs_path "${FLASHSALE_SERVICES_ENV:-$REPO/.services.env}")
export FLASHSALE_PG_PORT=${FLASHSALE_PG_PORT:-15432}
export FLASHSALE_KAFKA_PORT=${FLASHSALE_KAFKA_PORT:-19092}
export FLASHSALE_KAFKA_CONTROLLER_PORT=${FLASHSALE_KAFKA_CONTROLLER_PORT:-19093}
export FLASHSALE_PG_DIR=$SERVICES_DIR/postgres
export FLASHSALE_KAFKA_DIR=$SERVICES_DIR/kafka
export FLASHSALE_KAFKA_BROKERS=${FLASHSALE_KAFKA_BROKERS:-1}
[[ $FLASHSALE_KAFKA_BROKERS =~ ^[1-9]$ ]] ||
	die "FLASHSALE_KAFKA_BROKERS must be 1..9 (got '$FLASHSALE_KAFKA_BROKERS')"
[[ -z ${FLASHSALE_KAFKA_BROKER_ID:-} ]] ||
	die "FLASHSALE_KAFKA_BROKER_ID is for ops/kafka/start.sh / stop.sh (one broker); unset it for services-up"

# a Kafka dir made for another broker count is refused here, before anything is
# started or stopped (kafka/start.sh would refuse it too)
made_for=$(sed -n 's/^brokers=//p' "$FLASHSALE_KAFKA_DIR/.flashsale-kafka" 2>/dev/null | head -n 1 || true)
[[ -f $FLASHSALE_KAFKA_DIR/.flashsale-kafka ]] && made_for=${made_for:-1}
if [[ -n $made_for && $made_for != "$FLASHSALE_KAFKA_BROKERS" ]]; then
	die "$FLASHSALE_KAFKA_DIR holds a $made_for-broker Kafka but FLASHSALE_KAFKA_BROKERS=$FLASHSALE_KAFKA_BROKERS: run with FLASHSALE_KAFKA_BROKERS=$made_for, or ops/services-down.sh first"
fi

mkdir -p "$SERVICES_DIR"
t0=$SECONDS

# what runs already, and which dirs exist already (a failed run keeps those)
pg_was_up=0 kafka_was_up=0 pg_dir_was=0 kafka_dir_was=0
"$HERE/postgres/start.sh" --status >/dev/null 2>&1 && pg_was_up=1
"$HERE/kafka/start.sh" --status >/dev/null 2>&1 && kafka_was_up=1
[[ -d $FLASHSALE_PG_DIR ]] && pg_dir_was=1
[[ -d $FLASHSALE_KAFKA_DIR ]] && kafka_dir_was=1

pg_started=0 kafka_started=0
cleanup_on_failure() {
	local rc=$?
	((rc != 0)) || return 0
	warn "start failed (exit $rc): stopping what this run started"
	if ((kafka_started)); then
		if ((kafka_dir_was)); then
			"$HERE/kafka/stop.sh" --keep || true
		else
			"$HERE/kafka/stop.sh" || true
		fi
	fi
	if ((pg_started)); then
		if ((pg_dir_was)); then
			"$HERE/postgres/stop.sh" --keep || true
		else
			"$HERE/postgres/stop.sh" || true
		fi
	fi
	rmdir "$SERVICES_DIR" 2>/dev/null || true
	exit "$rc"
}
trap cleanup_on_failure EXIT

((pg_was_up)) || pg_started=1
PG_URL=$("$HERE/postgres/start.sh")

((kafka_was_up)) || kafka_started=1
KAFKA=$("$HERE/kafka/start.sh")

tmp=$ENV_FILE.tmp.$$
cat >"$tmp" <<EOF
FLASHSALE_KAFKA=$KAFKA
FLASHSALE_POSTGRES=$PG_URL
FLASHSALE_SERVICES_DIR=$SERVICES_DIR
FLASHSALE_PG_PORT=$FLASHSALE_PG_PORT
FLASHSALE_PG_DIR=$FLASHSALE_PG_DIR
FLASHSALE_KAFKA_PORT=$FLASHSALE_KAFKA_PORT
FLASHSALE_KAFKA_CONTROLLER_PORT=$FLASHSALE_KAFKA_CONTROLLER_PORT
FLASHSALE_KAFKA_DIR=$FLASHSALE_KAFKA_DIR
EOF
if ((FLASHSALE_KAFKA_BROKERS > 1)); then
	PIDS=$("$HERE/kafka/start.sh" --pids 2>/dev/null) || die "a broker is not running right after start (pids: $PIDS)"
	read -r -a pid_arr <<<"$PIDS"
	{
		echo "FLASHSALE_KAFKA_BROKERS=$FLASHSALE_KAFKA_BROKERS"
		echo "FLASHSALE_KAFKA_BROKER_PIDS=\"$PIDS\""
		for ((i = 1; i <= FLASHSALE_KAFKA_BROKERS; i++)); do
			echo "FLASHSALE_KAFKA_BROKER_${i}_PORT=$((FLASHSALE_KAFKA_PORT + 10 * (i - 1)))"
			echo "FLASHSALE_KAFKA_BROKER_${i}_CONTROLLER_PORT=$((FLASHSALE_KAFKA_CONTROLLER_PORT + 10 * (i - 1)))"
			echo "FLASHSALE_KAFKA_BROKER_${i}_DIR=$FLASHSALE_KAFKA_DIR/broker-$i"
			echo "FLASHSALE_KAFKA_BROKER_${i}_PID=${pid_arr[i - 1]}"
		done
	} >>"$tmp"
fi
mv "$tmp" "$ENV_FILE"
trap - EXIT

log "services up in $((SECONDS - t0))s; wrote $ENV_FILE"
cat "$ENV_FILE"
