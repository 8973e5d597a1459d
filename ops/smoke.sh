#!/usr/bin/env bash
# ops/smoke.sh - end-to-end check of the ops scripts against the real services:
# services-up, create + list a Kafka topic, produce and consume a record in a
# transaction-free round trip, `select 1` through psql with the URL, services-down, then
# check that the broker and postmaster are gone and the ports are free.
#
# Usage: ops/smoke.sh [--help]
#
# Uses its own state dir and env file (a temp dir), so it does not touch a
# .services.env of the repo, but it does need the ports (FLASHSALE_PG_PORT [15432],
# FLASHSALE_KAFKA_PORT [19092], FLASHSALE_KAFKA_CONTROLLER_PORT [19093]) to be free.
# Prints the timings of each step on stderr; exits non-zero on the first failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034 # read by lib.sh
OPS_NAME=smoke
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"

case ${1:-} in
-h | --help)
	usage_from_header "${BASH_SOURCE[0]}"
	exit 0
	;;
"") ;;
*) die "unknown argument: $1 (see --help)" ;;
esac

WORK=$(mktemp -d /tmp/flashsale-smoke.XXXXXX)
export FLASHSALE_SERVICES_DIR=$WORK/services
export FLASHSALE_SERVICES_ENV=$WORK/services.env
PG_PORT=${FLASHSALE_PG_PORT:-15432}
K_PORT=${FLASHSALE_KAFKA_PORT:-19092}
C_PORT=${FLASHSALE_KAFKA_CONTROLLER_PORT:-19093}

done_ok=0
finish() {
	if ((!done_ok)); then
		warn "smoke test failed: tearing down"
		"$HERE/services-down.sh" || true
	fi
	rm -rf "$WORK"
}
trap finish EXIT

step() { log "--- $* ($((SECONDS - T0))s)"; }
T0=$SECONDS

step "services-up"
"$HERE/services-up.sh" >"$WORK/up.out"
cat "$WORK/up.out" >&2
KAFKA=$(sed -n 's/^FLASHSALE_KAFKA=//p' "$FLASHSALE_SERVICES_ENV")
PG=$(sed -n 's/^FLASHSALE_POSTGRES=//p' "$FLASHSALE_SERVICES_ENV")
[[ $KAFKA == "127.0.0.1:$K_PORT" ]] || die "unexpected FLASHSALE_KAFKA=$KAFKA"
[[ $PG == "postgres://postgres@127.0.0.1:$PG_PORT/flashsale" ]] || die "unexpected FLASHSALE_POSTGRES=$PG"
KPID=$(cat "$FLASHSALE_SERVICES_DIR/kafka/kafka.pid")
PGPID=$(head -n 1 "$(readlink -f "$FLASHSALE_SERVICES_DIR/postgres/data")/postmaster.pid")
log "broker pid $KPID, postmaster pid $PGPID"

step "services-up again (idempotent)"
"$HERE/services-up.sh" >/dev/null
[[ $(cat "$FLASHSALE_SERVICES_DIR/kafka/kafka.pid") == "$KPID" ]] || die "second services-up started another broker"

step "kafka: create topic, list, produce, consume"
R=$HERE/kafka/run-class.sh
TOPIC=smoke-$$
"$R" org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA" --create --topic "$TOPIC" \
	--partitions 8 --replication-factor 1 >&2
"$R" org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA" --list | grep -qx "$TOPIC" ||
	die "topic $TOPIC not listed"
parts=$("$R" org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA" --describe --topic "$TOPIC" |
	grep -c 'Partition: ')
[[ $parts == 8 ]] || die "topic $TOPIC has $parts partitions, expected 8"
echo "hello-$$" | "$R" org.apache.kafka.tools.ConsoleProducer --bootstrap-server "$KAFKA" --topic "$TOPIC" >&2
got=$("$R" org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "$KAFKA" --topic "$TOPIC" \
	--from-beginning --max-messages 1 --timeout-ms 15000 2>/dev/null)
[[ $got == "hello-$$" ]] || die "consumed '$got', expected 'hello-$$'"
log "kafka ok: topic $TOPIC with 8 partitions, record round trip"

step "postgres: select 1"
out=$("${FLASHSALE_PG_BIN:-/usr/lib/postgresql/15/bin}/psql" "$PG" -X -tA -c 'select 1')
[[ $out == 1 ]] || die "psql select 1 returned '$out'"
log "postgres ok"

step "services-down"
"$HERE/services-down.sh"
[[ ! -e $FLASHSALE_SERVICES_ENV ]] || die "env file still there"
[[ ! -e $FLASHSALE_SERVICES_DIR ]] || die "state dir still there"
! pid_alive "$KPID" || die "broker pid $KPID still alive"
! pid_alive "$PGPID" || die "postmaster pid $PGPID still alive"
for p in "$PG_PORT" "$K_PORT" "$C_PORT"; do
	! port_open "$p" || die "port $p still open"
done

step "services-down again (nothing runs)"
"$HERE/services-down.sh"

done_ok=1
log "smoke test passed in $((SECONDS - T0))s"
