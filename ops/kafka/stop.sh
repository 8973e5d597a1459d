#!/usr/bin/env bash
# ops/kafka/stop.sh - stop the broker(s) started by ops/kafka/start.sh and remove their dir.
#
# Usage: ops/kafka/stop.sh [--help] [--keep]
#
#   (no option)  SIGTERM the broker (a cluster: every broker at once), wait up to
#                FLASHSALE_KAFKA_STOP_TIMEOUT s [30], then SIGKILL; then DELETE the state
#                dir (config, data = every topic and its records, logs).
#   --keep       stop, but keep the state dir: a later start.sh with the same
#                environment starts the same broker(s) again with their data.
#
# Same environment as start.sh: FLASHSALE_KAFKA_DIR, or FLASHSALE_KAFKA_PORT to find the
# default dir ${TMPDIR:-/tmp}/flashsale-kafka-PORT. A cluster is recognised by its dir
# (FLASHSALE_KAFKA_BROKERS is not needed): all its brokers are stopped.
# FLASHSALE_KAFKA_BROKER_ID=i stops only broker i of the cluster (graceful shutdown,
# SIGTERM) and always keeps the dir; restart it with the same variable and start.sh.
# (A test that wants a crash kills the pid with kill -9 instead; see start.sh --pids.)
# Exits 0 when nothing runs. Only a dir that start.sh made (it holds .flashsale-kafka)
# is ever deleted.
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
BROKER_ID=${FLASHSALE_KAFKA_BROKER_ID:-}
MARKER=$DIR/.flashsale-kafka

if [[ ! -d $DIR ]]; then
	log "nothing to stop: $DIR does not exist"
	exit 0
fi
if [[ ! -f $MARKER ]]; then
	die "$DIR was not made by ops/kafka/start.sh (no $MARKER); not touching it"
fi

# the broker dirs: the dir itself (single broker), or broker-i/ (cluster)
BROKERS=$(sed -n 's/^brokers=//p' "$MARKER" 2>/dev/null | head -n 1)
BROKERS=${BROKERS:-1}
declare -A BDIR=()
if ((BROKERS == 1)) && [[ ! -d $DIR/broker-1 ]]; then
	BDIR[1]=$DIR
else
	for d in "$DIR"/broker-*/; do
		[[ -d $d ]] || continue
		d=${d%/}
		BDIR[${d##*/broker-}]=$d
	done
fi
IDS=$(printf '%s\n' "${!BDIR[@]}" | sort -n)
if [[ -n $BROKER_ID ]]; then
	[[ -n ${BDIR[$BROKER_ID]:-} ]] || die "no broker $BROKER_ID in $DIR (brokers: $(echo $IDS))"
	IDS=$BROKER_ID
	KEEP=1
fi

rc=0
declare -A PID=()
for i in $IDS; do
	d=${BDIR[$i]}
	pid=$(cat "$d/kafka.pid" 2>/dev/null || true)
	if [[ -n $pid ]] && pid_alive "$pid" && pid_cmdline_has "$pid" "$d/server.properties"; then
		PID[$i]=$pid
	else
		# a JVM of this dir whose pid file was lost
		pid=$(pgrep -f "kafka.Kafka $d/server.properties" | head -n 1 || true)
		if [[ -n $pid ]]; then
			warn "broker $i: pid file lost, found a stray JVM (pid $pid)"
			PID[$i]=$pid
		else
			log "no broker $i running for $d"
		fi
	fi
done

# SIGTERM to all first (a cluster shuts down together: a broker stopped long after its
# quorum peers would wait for a controller that is gone), then wait for each
for i in "${!PID[@]}"; do
	kill -TERM "${PID[$i]}" 2>/dev/null || true
done
for i in $(printf '%s\n' "${!PID[@]}" | sort -n); do
	what="Kafka broker"
	((BROKERS == 1)) || what="Kafka broker $i"
	kill_bounded "${PID[$i]}" "$STOP_TIMEOUT" "$what" || rc=1
done
for i in $IDS; do rm -f "${BDIR[$i]}/kafka.pid"; done
((rc == 0)) || die "could not stop the broker(s) of $DIR"

if ((KEEP)); then
	if [[ -n $BROKER_ID ]]; then
		log "stopped broker $BROKER_ID; kept $DIR (restart: FLASHSALE_KAFKA_BROKER_ID=$BROKER_ID ops/kafka/start.sh)"
	else
		log "stopped; kept $DIR"
	fi
else
	rm -rf "$DIR"
	if ((BROKERS == 1)); then
		log "stopped; removed $DIR (every topic and its data)"
	else
		log "stopped $BROKERS brokers; removed $DIR (every topic and its data, on all brokers)"
	fi
fi
