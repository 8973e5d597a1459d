#!/usr/bin/env bash
# ops/kafka/start.sh - start a real single-node Apache Kafka 4.x broker (KRaft,
# broker+controller in one JVM) on 127.0.0.1, without Docker.
#
# Usage: ops/kafka/start.sh [--help] [--status] [--fetch-only]
#
#   (no option)   fetch the jars if not cached, write the config, format the storage
#                 (first start only), start the broker in the background, wait until a
#                 client can list topics, print the bootstrap address (127.0.0.1:PORT)
#                 on stdout. If the broker of this dir already runs: print it, exit 0.
#                 If the dir holds a formatted broker (after `stop.sh --keep`), it is
#                 started again with its data.
#   --status      exit 0 if the broker of this dir runs (and print its address), 3 if not
#   --fetch-only  only fill the jar cache (prints the libs dir on stdout)
#
# Environment (defaults in brackets):
#   FLASHSALE_KAFKA_PORT             client listener port [19092]
#   FLASHSALE_KAFKA_CONTROLLER_PORT  KRaft controller port [19093]
#   FLASHSALE_KAFKA_DIR              state dir: config, data, logs, pid
#                                    [${TMPDIR:-/tmp}/flashsale-kafka-PORT]
#   FLASHSALE_KAFKA_VERSION          Apache Kafka version from Maven Central [4.1.1]
#   FLASHSALE_CACHE                  jar cache [$HOME/.cache/flashsale]; jars go to
#                                    $FLASHSALE_CACHE/kafka-VERSION/libs
#   FLASHSALE_KAFKA_PARTITIONS       num.partitions for new topics [8]
#   FLASHSALE_KAFKA_HEAP             JVM -Xmx [512m]
#   FLASHSALE_KAFKA_START_TIMEOUT    seconds to wait for the broker [60]
#   FLASHSALE_MVN_ARGS               extra arguments for mvn (e.g. -o, -Dmaven.repo.local=..)
#
# Logs: $FLASHSALE_KAFKA_DIR/logs/server.log (log4j2) and logs/kafka.out (JVM stdout/err).
# Stop with ops/kafka/stop.sh (same environment).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034 # read by lib.sh
OPS_NAME=kafka/start
# shellcheck source-path=SCRIPTDIR/.. source=lib.sh
. "$HERE/../lib.sh"

MODE=start
for arg in "$@"; do
	case $arg in
	-h | --help)
		usage_from_header "${BASH_SOURCE[0]}"
		exit 0
		;;
	--status) MODE=status ;;
	--fetch-only) MODE=fetch ;;
	*) die "unknown argument: $arg (see --help)" ;;
	esac
done

PORT=${FLASHSALE_KAFKA_PORT:-19092}
CTRL_PORT=${FLASHSALE_KAFKA_CONTROLLER_PORT:-19093}
VERSION=${FLASHSALE_KAFKA_VERSION:-4.1.1}
CACHE=${FLASHSALE_CACHE:-$HOME/.cache/flashsale}
DIR=$(abs_path "${FLASHSALE_KAFKA_DIR:-${TMPDIR:-/tmp}/flashsale-kafka-$PORT}")
PARTITIONS=${FLASHSALE_KAFKA_PARTITIONS:-8}
HEAP=${FLASHSALE_KAFKA_HEAP:-512m}
START_TIMEOUT=${FLASHSALE_KAFKA_START_TIMEOUT:-60}
LIBS=$CACHE/kafka-$VERSION/libs
BOOTSTRAP=127.0.0.1:$PORT
PIDFILE=$DIR/kafka.pid
MARKER=$DIR/.flashsale-kafka

[[ $PORT =~ ^[0-9]+$ && $CTRL_PORT =~ ^[0-9]+$ ]] || die "ports must be numbers"
[[ $PORT != "$CTRL_PORT" ]] || die "client and controller port are both $PORT"

# ---------------------------------------------------------------------------------
# jar cache
# ---------------------------------------------------------------------------------
fetch_jars() {
	if [[ -f $LIBS/.complete ]]; then
		return 0
	fi
	command -v mvn >/dev/null || die "mvn not found (Maven is needed to fetch the Kafka jars)"
	command -v java >/dev/null || die "java not found (Java 17+ is needed to run Kafka 4.x)"
	mkdir -p "$CACHE"
	# one fetch at a time per version
	exec 9>"$CACHE/kafka-$VERSION.lock"
	flock -w 600 9 || die "could not lock $CACHE/kafka-$VERSION.lock within 600s"
	if [[ -f $LIBS/.complete ]]; then
		exec 9>&-
		return 0
	fi
	local tmp="$LIBS.tmp.$$" t0=$SECONDS
	rm -rf "$tmp"
	mkdir -p "$tmp"
	log "fetching Apache Kafka $VERSION jars from Maven Central into $LIBS (first time only)"
	# shellcheck disable=SC2086
	if ! mvn -q -B ${FLASHSALE_MVN_ARGS:-} -f "$HERE/pom.xml" -Dkafka.version="$VERSION" \
		dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" \
		>"$CACHE/kafka-$VERSION.mvn.log" 2>&1; then
		tail -n 30 "$CACHE/kafka-$VERSION.mvn.log" >&2 || true
		rm -rf "$tmp"
		die "mvn could not fetch Kafka $VERSION (full log: $CACHE/kafka-$VERSION.mvn.log)"
	fi
	[[ -f $tmp/kafka_2.13-$VERSION.jar ]] || {
		rm -rf "$tmp"
		die "mvn succeeded but kafka_2.13-$VERSION.jar is missing"
	}
	touch "$tmp/.complete"
	rm -rf "$LIBS"
	mv "$tmp" "$LIBS"
	exec 9>&-
	log "fetched $(find "$LIBS" -name '*.jar' | wc -l) jars ($(du -sh "$LIBS" | cut -f1)) in $((SECONDS - t0))s"
}

# ---------------------------------------------------------------------------------
# state
# ---------------------------------------------------------------------------------
running_pid() {
	local pid
	[[ -f $PIDFILE ]] || return 1
	pid=$(cat "$PIDFILE" 2>/dev/null || true)
	pid_alive "$pid" || return 1
	pid_cmdline_has "$pid" "$DIR/server.properties" || return 1
	printf '%s\n' "$pid"
}

# A client can talk to the broker: list topics through the AdminClient.
broker_answers() {
	timeout 20 java -Xmx128m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
		-Dlog4j2.configurationFile="$DIR/tools-log4j2.properties" \
		-cp "$LIBS/*" org.apache.kafka.tools.TopicCommand \
		--bootstrap-server "$BOOTSTRAP" --command-config "$DIR/admin.properties" \
		--list >/dev/null 2>>"$DIR/logs/readiness.log"
}

if [[ $MODE == status ]]; then
	if pid=$(running_pid); then
		log "broker running (pid $pid, dir $DIR)"
		echo "$BOOTSTRAP"
		exit 0
	fi
	log "no broker running for $DIR"
	exit 3
fi

fetch_jars
if [[ $MODE == fetch ]]; then
	echo "$LIBS"
	exit 0
fi

if pid=$(running_pid); then
	log "broker already running (pid $pid, dir $DIR)"
	echo "$BOOTSTRAP"
	exit 0
fi

for p in "$PORT" "$CTRL_PORT"; do
	if port_open "$p"; then
		die "port 127.0.0.1:$p is already in use by another process (set FLASHSALE_KAFKA_PORT / FLASHSALE_KAFKA_CONTROLLER_PORT, or run ops/kafka/stop.sh with the env of that broker)"
	fi
done

if [[ -e $DIR && ! -f $MARKER ]] && [[ -n $(ls -A "$DIR" 2>/dev/null) ]]; then
	die "$DIR exists, is not empty and was not made by this script; refusing to use it"
fi
mkdir -p "$DIR/data" "$DIR/logs"
touch "$MARKER"
rm -f "$PIDFILE"

# ---------------------------------------------------------------------------------
# config (rewritten on every start; the data dir keeps its cluster id)
# ---------------------------------------------------------------------------------
cat >"$DIR/server.properties" <<EOF
# written by ops/kafka/start.sh - single-node KRaft broker for flashsale tests
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CTRL_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CTRL_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CTRL_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DIR/data
num.partitions=$PARTITIONS
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
delete.topic.enable=true
num.network.threads=2
num.io.threads=4
log.retention.hours=24
log.segment.bytes=67108864
EOF

cat >"$DIR/log4j2.properties" <<EOF
# written by ops/kafka/start.sh
status = warn
name = flashsale-kafka
appender.server.type = File
appender.server.name = server
appender.server.fileName = $DIR/logs/server.log
appender.server.layout.type = PatternLayout
appender.server.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.server.ref = server
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
EOF

cat >"$DIR/tools-log4j2.properties" <<'EOF'
# written by ops/kafka/start.sh - for CLI tools: warnings only, on stderr
status = warn
name = flashsale-kafka-tools
appender.stderr.type = Console
appender.stderr.name = stderr
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stderr.ref = stderr
EOF

cat >"$DIR/admin.properties" <<'EOF'
# written by ops/kafka/start.sh - short timeouts for CLI tools
request.timeout.ms=5000
default.api.timeout.ms=10000
EOF

# ---------------------------------------------------------------------------------
# storage format (first start of this dir only)
# ---------------------------------------------------------------------------------
if [[ ! -f $DIR/data/meta.properties ]]; then
	if [[ ! -s $DIR/cluster.id ]]; then
		# what `kafka.tools.StorageTool random-uuid` prints (16 random bytes, base64url,
		# no padding, not starting with '-'), without paying for a JVM start
		cid=-
		while [[ $cid == -* ]]; do
			cid=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
		done
		echo "$cid" >"$DIR/cluster.id"
	fi
	CLUSTER_ID=$(tr -d '[:space:]' <"$DIR/cluster.id")
	log "formatting KRaft storage in $DIR/data (cluster id $CLUSTER_ID)"
	java -Xmx128m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
		-Dlog4j2.configurationFile="$DIR/tools-log4j2.properties" \
		-cp "$LIBS/*" kafka.tools.StorageTool format --standalone \
		-t "$CLUSTER_ID" -c "$DIR/server.properties" >"$DIR/logs/format.log" 2>&1 || {
		cat "$DIR/logs/format.log" >&2
		die "kafka.tools.StorageTool format failed"
	}
else
	log "reusing formatted storage in $DIR/data"
fi

# ---------------------------------------------------------------------------------
# start
# ---------------------------------------------------------------------------------
T_START=$SECONDS
log "starting Kafka $VERSION on $BOOTSTRAP (controller 127.0.0.1:$CTRL_PORT, dir $DIR)"
# setsid: own session, so the broker outlives this script and its process group.
# The inner bash writes its own pid and then becomes the JVM (exec), so the pid file
# holds the JVM's pid even if setsid had to fork.
(
	cd "$DIR"
	# shellcheck disable=SC2016 # expanded by the inner bash
	setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PIDFILE" \
		java -Xms"$HEAP" -Xmx"$HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
		-XX:+ExitOnOutOfMemoryError -XX:ErrorFile="$DIR/logs/hs_err_%p.log" \
		-Djava.awt.headless=true \
		-Dkafka.logs.dir="$DIR/logs" \
		-Dlog4j2.configurationFile="$DIR/log4j2.properties" \
		-cp "$LIBS/*" kafka.Kafka "$DIR/server.properties" \
		</dev/null >>"$DIR/logs/kafka.out" 2>&1 &
)

wait_until 10 "pid file $PIDFILE" test -s "$PIDFILE" || die "broker did not start (see $DIR/logs/kafka.out)"
PID=$(cat "$PIDFILE")

fail_start() {
	warn "$1"
	warn "last lines of $DIR/logs/kafka.out:"
	tail -n 20 "$DIR/logs/kafka.out" >&2 || true
	warn "last lines of $DIR/logs/server.log:"
	tail -n 30 "$DIR/logs/server.log" >&2 2>/dev/null || true
	kill_bounded "$PID" 10 "broker" || true
	rm -f "$PIDFILE"
	die "Kafka did not start; logs are in $DIR/logs"
}

deadline=$((SECONDS + START_TIMEOUT))
while ! port_open "$PORT"; do
	pid_alive "$PID" || fail_start "the broker JVM exited during startup"
	((SECONDS < deadline)) || fail_start "port $PORT not open after ${START_TIMEOUT}s"
	sleep 0.2
done
until broker_answers; do
	pid_alive "$PID" || fail_start "the broker JVM exited during startup"
	((SECONDS < deadline)) || fail_start "no answer to a topic list after ${START_TIMEOUT}s (see also $DIR/logs/readiness.log)"
	sleep 0.5
done

log "broker ready in $((SECONDS - T_START))s (pid $PID) - logs: $DIR/logs/server.log"
echo "$BOOTSTRAP"
