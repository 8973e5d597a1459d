#!/usr/bin/env bash
# ops/kafka/stop.sh - stop the broker started by ops/kafka/start.sh and remove its dir.
#
# Usage: ops/kafka/stop.sh [--help] [--keep]
#
#   (no option)  SIGTERM the broker, wait up to FLASHSALE_KAFKA_STOP_TIMEOUT s [30],
#                then SIGKILL; then delete the state dir (config, data, logs).
#   --keep       stop, but keep the state dir: a later start.sh with the same
#                environment starts the same broker again with its data.
#
# Same environment as start.sh: FLASHSALE_KAFKA_DIR, or FLASHSALE_KAFKA_PORT to find the
# default dir ${TMPDIR:-/tmp}/flashsale-kafka-PORT. Exits 0 when nothing runs.
# Only a dir that start.sh made (it holds .flashsale-kafka) is ever deleted.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034 # read by lib.sh
OPS_NAME=kafka/stop
# shellcheck source-path=SCRIPTDIR/.. source=lib.sh
. "$HERE/../lib.sh"

KEEP=0
for arg in "$@"; do
	case $arg in
	-h | --help)
		usage_from_header "${BASH_SOURCE[0]}"
		exit 0
		;;
	--keep) KEEP=1 ;;
	*) die "unknown argument: $arg (see --help)" ;;
	esac
done

PORT=${FLASHSALE_KAFKA_PORT:-19092}
DIR=$(abs_path "${FLASHSALE_KAFKA_DIR:-${TMPDIR:-/tmp}/flashsale-kafka-$PORT}")
STOP_TIMEOUT=${FLASHSALE_KAFKA_STOP_TIMEOUT:-30}
PIDFILE=$DIR/kafka.pid
MARKER=$DIR/.flashsale-kafka

if [[ ! -d $DIR ]]; then
	log "nothing to stop: $DIR does not exist"
	exit 0
fi
if [[ ! -f $MARKER ]]; then
	die "$DIR was not made by ops/kafka/start.sh (no $MARKER); not touching it"
fi

rc=0
pid=$(cat "$PIDFILE" 2>/dev/null || true)
if [[ -n $pid ]] && pid_alive "$pid" && pid_cmdline_has "$pid" "$DIR/server.properties"; then
	kill_bounded "$pid" "$STOP_TIMEOUT" "Kafka broker" || rc=1
else
	log "no broker running for $DIR"
	# a JVM of this dir whose pid file was lost
	for p in $(pgrep -f "kafka.Kafka $DIR/server.properties" || true); do
		kill_bounded "$p" "$STOP_TIMEOUT" "stray Kafka broker" || rc=1
	done
fi
rm -f "$PIDFILE"
((rc == 0)) || die "could not stop the broker of $DIR"

if ((KEEP)); then
	log "stopped; kept $DIR"
else
	rm -rf "$DIR"
	log "stopped; removed $DIR"
fi
