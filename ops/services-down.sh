#!/usr/bin/env bash
# ops/services-down.sh - stop what ops/services-up.sh started (Kafka: the broker, or every
# broker of a cluster; then PostgreSQL) and DELETE their state: the Kafka dir (every
# topic and its records, on every broker), the PostgreSQL dir (the database and all its
# data), and <repo>/.services.env. It prints what it deletes.
#
# Usage: ops/services-down.sh [--help]
#
# Finds the ports and dirs in <repo>/.services.env if it exists, else uses the same
# environment and defaults as services-up.sh (a cluster is recognised by its dir). Exits
# 0 when nothing runs; non-zero only if a running service could not be stopped.
# To keep the data, use ops/kafka/stop.sh --keep and ops/postgres/stop.sh --keep instead.
#
# Environment: FLASHSALE_SERVICES_DIR [<repo>/.services], FLASHSALE_SERVICES_ENV
# [<repo>/.services.env], FLASHSALE_PG_PORT [15432], FLASHSALE_KAFKA_PORT [19092].
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034 # read by lib.sh
OPS_NAME=services-down
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
ENV_FILE=$(abs_path "${FLASHSALE_SERVICES_ENV:-$REPO/.services.env}")

# read (not source) the env file: only the keys we know
declare -A saved=()
if [[ -f $ENV_FILE ]]; then
	while IFS='=' read -r key value; do
		case $key in
		FLASHSALE_SERVICES_DIR | FLASHSALE_PG_PORT | FLASHSALE_PG_DIR | FLASHSALE_KAFKA_PORT | \
			FLASHSALE_KAFKA_CONTROLLER_PORT | FLASHSALE_KAFKA_DIR | FLASHSALE_KAFKA_BROKERS)
			saved[$key]=$value
			;;
		esac
	done <"$ENV_FILE"
fi

SERVICES_DIR=$(abs_path "${saved[FLASHSALE_SERVICES_DIR]:-${FLASHSALE_SERVICES_DIR:-$REPO/.services}}")
export FLASHSALE_PG_PORT=${saved[FLASHSALE_PG_PORT]:-${FLASHSALE_PG_PORT:-15432}}
export FLASHSALE_KAFKA_PORT=${saved[FLASHSALE_KAFKA_PORT]:-${FLASHSALE_KAFKA_PORT:-19092}}
export FLASHSALE_PG_DIR=${saved[FLASHSALE_PG_DIR]:-$SERVICES_DIR/postgres}
export FLASHSALE_KAFKA_DIR=${saved[FLASHSALE_KAFKA_DIR]:-$SERVICES_DIR/kafka}
unset FLASHSALE_KAFKA_BROKER_ID # services-down stops every broker

# say what goes away before it does
kafka_what=
if [[ -f $FLASHSALE_KAFKA_DIR/.flashsale-kafka ]]; then
	n=$(sed -n 's/^brokers=//p' "$FLASHSALE_KAFKA_DIR/.flashsale-kafka" | head -n 1)
	n=${n:-${saved[FLASHSALE_KAFKA_BROKERS]:-1}}
	kafka_what="Kafka ($n broker(s)): $FLASHSALE_KAFKA_DIR - every topic and its records"
fi
pg_what=
if [[ -f $FLASHSALE_PG_DIR/.flashsale-pg ]]; then
	pg_what="PostgreSQL (port $FLASHSALE_PG_PORT): $FLASHSALE_PG_DIR - the cluster, its databases and all their data"
fi
if [[ -z $kafka_what$pg_what ]]; then
	log "nothing to delete: no $FLASHSALE_KAFKA_DIR, no $FLASHSALE_PG_DIR"
else
	log "stopping the services and DELETING their state:"
	[[ -z $kafka_what ]] || log "  $kafka_what"
	[[ -z $pg_what ]] || log "  $pg_what"
	[[ ! -f $ENV_FILE ]] || log "  $ENV_FILE"
fi

rc=0
"$HERE/kafka/stop.sh" || {
	warn "stopping Kafka failed"
	rc=1
}
"$HERE/postgres/stop.sh" || {
	warn "stopping PostgreSQL failed"
	rc=1
}
rm -f "$ENV_FILE"
rmdir "$SERVICES_DIR" 2>/dev/null || true

if ((rc == 0)); then
	if [[ -n $kafka_what$pg_what ]]; then
		deleted=()
		[[ -z $kafka_what ]] || deleted+=("$FLASHSALE_KAFKA_DIR")
		[[ -z $pg_what ]] || deleted+=("$FLASHSALE_PG_DIR")
		deleted+=("$ENV_FILE")
		log "services down; deleted ${deleted[*]}"
	else
		log "services down"
	fi
else
	warn "some service could not be stopped (see above)"
fi
exit "$rc"
