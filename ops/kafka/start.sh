#!/usr/bin/env bash
# ops/kafka/start.sh - start a real Apache Kafka 4.x on 127.0.0.1, without Docker: by
# default one KRaft node (broker+controller in one JVM); with FLASHSALE_KAFKA_BROKERS=3
# a 3-node cluster (one JVM per node, each broker+controller, a 3-voter controller
# quorum), replication factor 3 and min.insync.replicas 2 by default.
#
# Usage: ops/kafka/start.sh [--help] [--status] [--pids] [--fetch-only]
#
#   (no option)   fetch the jars if not cached, write the configs, format the storage
#                 (first start only), start the broker(s) in the background, wait until
#                 a client can use them, print the bootstrap address on stdout:
#                 127.0.0.1:PORT, or for a cluster all addresses comma-separated in
#                 broker-id order. Brokers of this dir that already run are kept (exit 0);
#                 a dir that holds formatted brokers (after `stop.sh --keep`, or a broker
#                 killed with kill -9) starts them again with their data.
#   --status      exit 0 if the broker(s) of this dir run (and print the address), 3 if not
#                 (a cluster: 0 only when every broker runs)
#   --pids        print the pids of the broker(s) in broker-id order, space-separated,
#                 `-` for one that does not run; exit 0 if all run, 3 if not
#   --fetch-only  only fill the jar cache (prints the libs dir on stdout)
#
# Cluster (FLASHSALE_KAFKA_BROKERS=N, N in 2..9; made for N=3):
#   broker i (1..N) listens on FLASHSALE_KAFKA_PORT + 10*(i-1) (clients) and
#   FLASHSALE_KAFKA_CONTROLLER_PORT + 10*(i-1) (KRaft controller): with the defaults
#   19092/19093, 19102/19103, 19112/19113. Broker 1 keeps the single broker's ports.
#   Its state is in $FLASHSALE_KAFKA_DIR/broker-i/ (server.properties, data/, logs/,
#   kafka.pid); the cluster id in $FLASHSALE_KAFKA_DIR/cluster.id.
#   Ready means: every broker is registered (org.apache.kafka.tools.BrokerApiVersionsCommand
#   lists all ids) and a topic with replication factor min(N,3) can be created, listed
#   and described with a full ISR (the probe topic flashsale-readiness-probe is deleted
#   again).
#   One broker of the cluster: FLASHSALE_KAFKA_BROKER_ID=i (with the same environment,
#   FLASHSALE_KAFKA_BROKERS included) (re)starts only broker i, e.g. after a kill -9:
#     FLASHSALE_KAFKA_BROKERS=3 FLASHSALE_KAFKA_BROKER_ID=2 ops/kafka/start.sh
#   It waits until broker i is registered again, then (up to the start timeout, a
#   warning if not) until no partition is under-replicated. If the env file of
#   services-up ($FLASHSALE_SERVICES_ENV [<repo>/.services.env]) describes this dir, its
#   FLASHSALE_KAFKA_BROKER_PIDS and FLASHSALE_KAFKA_BROKER_<i>_PID lines are updated.
#   `--status` / `--pids` with FLASHSALE_KAFKA_BROKER_ID look at that broker only.
#   The dir remembers its broker count (.flashsale-kafka): starting it with another
#   FLASHSALE_KAFKA_BROKERS (or unset) is refused.
#
# Environment (defaults in brackets):
#   FLASHSALE_KAFKA_BROKERS          number of brokers [1]
#   FLASHSALE_KAFKA_BROKER_ID        only this broker of the cluster (1..N) [all]
#   FLASHSALE_KAFKA_PORT             client listener port (of broker 1) [19092]
#   FLASHSALE_KAFKA_CONTROLLER_PORT  KRaft controller port (of broker 1) [19093]
#   FLASHSALE_KAFKA_DIR              state dir: config, data, logs, pid
#                                    [${TMPDIR:-/tmp}/flashsale-kafka-PORT]
#   FLASHSALE_KAFKA_VERSION          Apache Kafka version from Maven Central [4.1.1]
#   FLASHSALE_CACHE                  jar cache [$HOME/.cache/flashsale]; jars go to
#                                    $FLASHSALE_CACHE/kafka-VERSION/libs
#   FLASHSALE_KAFKA_PARTITIONS       num.partitions for new topics [8]
#   FLASHSALE_KAFKA_HEAP             JVM -Xms/-Xmx of each broker [1g; cluster: 384m]
#   FLASHSALE_KAFKA_GC_OPTS          the brokers' JVM garbage-collector options, space-
#                                    separated [-XX:+UseZGC; cluster: -XX:+UseG1GC
#                                    -XX:MaxGCPauseMillis=20]. One broker: ZGC, not G1:
#                                    G1 stops the broker for every young collection, and
#                                    on a small box whose cores the node shares those
#                                    pauses stretched to 100-400 ms and once 3.3 s at only
#                                    2,000 holds/s; ZGC collects concurrently (README,
#                                    "The 10:00 crowd"). A cluster keeps G1: three ZGC
#                                    JVMs on the 2 cores lengthened the broker-kill window
#                                    (median 5.9 s against 4.3 s, make test-cluster).
#   FLASHSALE_KAFKA_START_TIMEOUT    seconds to wait for the broker(s) [60; cluster: 120]
#   FLASHSALE_KAFKA_EXTRA_PROPERTIES extra key=value lines (newline-separated) appended
#                                    to every broker's server.properties (they override)
#   FLASHSALE_MVN_ARGS               extra arguments for mvn (e.g. -o, -Dmaven.repo.local=..)
#
# Broker settings of a cluster (N >= 3; each differs from Kafka's default on purpose):
#   default.replication.factor=3, min.insync.replicas=2, offsets.topic.replication.factor=3,
#   transaction.state.log.replication.factor=3, transaction.state.log.min.isr=2
#   (share.coordinator.state.topic the same); unclean.leader.election.enable=false.
#   Fast failure detection for loopback tests (Kafka default in parentheses):
#   broker.heartbeat.interval.ms=500 (2000) and broker.session.timeout.ms=2500 (9000):
#     the active controller fences a broker ~2.5 s after its last heartbeat, which moves
#     the leadership of its partitions and drops it from their ISRs (acks=all writes
#     go on with the 2 others);
#   controller.quorum.fetch.timeout.ms=1000 (2000), controller.quorum.election.timeout.ms
#     =500 (1000): a dead active controller is replaced after ~1-1.5 s;
#   replica.lag.time.max.ms=10000 (30000): a live but stuck follower leaves the ISR;
#   leader.imbalance.check.interval.seconds=10 (300): a restarted broker gets its
#     preferred leaderships back within ~10 s (auto.leader.rebalance.enable=true).
#   A single broker (N=1) keeps the settings it always had (replication factor 1).
#
# Group sessions (every broker, single or cluster; Kafka's default in parentheses):
#   group.min.session.timeout.ms=500 (6000): the engines' classic-protocol session
#     (--session-timeout-ms, 600 ms by default) is allowed;
#   group.consumer.session.timeout.ms=600 (45000), group.consumer.heartbeat.interval.ms
#     =150 (5000), and their minimums group.consumer.min.session.timeout.ms=500 (45000),
#     group.consumer.min.heartbeat.interval.ms=100 (5000): the session of the engines'
#     default KIP-848 consumer protocol (--group-protocol consumer), which the broker
#     alone times; a kill -9 of an engine is detected within ~0.6 s. A broker without
#     them gives the engines a 45 s session (docs/overload.md).
#
# Logs: $FLASHSALE_KAFKA_DIR/logs/server.log (log4j2) and logs/kafka.out (JVM stdout/err);
# a cluster: $FLASHSALE_KAFKA_DIR/broker-i/logs/.
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
	--pids) MODE=pids ;;
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
BROKERS=${FLASHSALE_KAFKA_BROKERS:-1}
BROKER_ID=${FLASHSALE_KAFKA_BROKER_ID:-}
LIBS=$CACHE/kafka-$VERSION/libs
MARKER=$DIR/.flashsale-kafka
REPO=$(cd "$HERE/../.." && pwd)
ENV_FILE=$(abs_path "${FLASHSALE_SERVICES_ENV:-$REPO/.services.env}")

[[ $PORT =~ ^[0-9]+$ && $CTRL_PORT =~ ^[0-9]+$ ]] || die "ports must be numbers"
[[ $PORT != "$CTRL_PORT" ]] || die "client and controller port are both $PORT"
[[ $BROKERS =~ ^[1-9]$ ]] || die "FLASHSALE_KAFKA_BROKERS must be 1..9 (got '$BROKERS')"
if [[ -n $BROKER_ID ]]; then
	[[ $BROKER_ID =~ ^[1-9]$ ]] && ((BROKER_ID <= BROKERS)) ||
		die "FLASHSALE_KAFKA_BROKER_ID must be 1..$BROKERS (FLASHSALE_KAFKA_BROKERS=$BROKERS; got '$BROKER_ID')"
fi
if ((BROKERS == 1)); then
	read -r -a GC_OPTS <<<"${FLASHSALE_KAFKA_GC_OPTS:--XX:+UseZGC}"
	HEAP=${FLASHSALE_KAFKA_HEAP:-1g}
	START_TIMEOUT=${FLASHSALE_KAFKA_START_TIMEOUT:-60}
	RF=1 MIN_ISR=1
else
	read -r -a GC_OPTS <<<"${FLASHSALE_KAFKA_GC_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20}"
	HEAP=${FLASHSALE_KAFKA_HEAP:-384m}
	START_TIMEOUT=${FLASHSALE_KAFKA_START_TIMEOUT:-120}
	RF=$((BROKERS < 3 ? BROKERS : 3))
	MIN_ISR=$((RF >= 3 ? 2 : 1))
fi

# broker i: ports, dir (a single broker lives in $DIR itself, as it always did)
bport() { echo $((PORT + 10 * ($1 - 1))); }
cport() { echo $((CTRL_PORT + 10 * ($1 - 1))); }
bdir() { if ((BROKERS == 1)); then echo "$DIR"; else echo "$DIR/broker-$1"; fi; }
ALL_IDS=$(seq 1 "$BROKERS")
if [[ -n $BROKER_ID ]]; then IDS=$BROKER_ID; else IDS=$ALL_IDS; fi
BOOTSTRAP=$(for i in $ALL_IDS; do printf '127.0.0.1:%s\n' "$(bport "$i")"; done | paste -sd,)

# every port of the cluster distinct (the +10 steps could meet the other base port)
# shellcheck disable=SC2046
if [[ -n $(for i in $ALL_IDS; do bport "$i"; cport "$i"; done | sort | uniq -d) ]]; then
	die "the client ports $PORT+10*(i-1) and controller ports $CTRL_PORT+10*(i-1) of $BROKERS brokers overlap; pick base ports that do not differ by a multiple of 10 (e.g. 19092/19093)"
fi

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
# running_pid I: the pid of broker I if it runs (prints it), else false.
running_pid() {
	local d pid
	d=$(bdir "$1")
	[[ -f $d/kafka.pid ]] || return 1
	pid=$(cat "$d/kafka.pid" 2>/dev/null || true)
	pid_alive "$pid" || return 1
	pid_cmdline_has "$pid" "$d/server.properties" || return 1
	printf '%s\n' "$pid"
}

# pids_line IDS...: "pid pid -" in the order given.
pids_line() {
	local i out=()
	for i in "$@"; do out+=("$(running_pid "$i" || echo -)"); done
	echo "${out[*]}"
}

# The broker count this dir was made for (its marker), empty if unknown.
dir_brokers() {
	[[ -f $MARKER ]] || return 0
	local n
	n=$(sed -n 's/^brokers=//p' "$MARKER" 2>/dev/null | head -n 1)
	echo "${n:-1}"
}

# a Kafka CLI class on the cached jars: timeout 20 "${TOOL[@]}" CLASS ARGS...
TOOL=(java -Xmx128m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC
	-Dlog4j2.configurationFile="$DIR/tools-log4j2.properties" -cp "$LIBS/*")

# A client can talk to the broker: list topics through the AdminClient.
broker_answers() {
	timeout 20 java -Xmx128m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
		-Dlog4j2.configurationFile="$DIR/tools-log4j2.properties" \
		-cp "$LIBS/*" org.apache.kafka.tools.TopicCommand \
		--bootstrap-server "$BOOTSTRAP" --command-config "$DIR/admin.properties" \
		--list >/dev/null 2>>"$DIR/logs/readiness.log"
}

# brokers_registered IDS...: every given broker id is in the cluster's metadata
# (registered and unfenced), as a client sees it.
brokers_registered() {
	local out i
	out=$(timeout 20 "${TOOL[@]}" org.apache.kafka.tools.BrokerApiVersionsCommand \
		--bootstrap-server "$BOOTSTRAP" --command-config "$DIR/admin.properties" \
		2>>"$DIR/logs/readiness.log" | grep -o '(id: [0-9]*' || true)
	for i in "$@"; do
		grep -qx "(id: $i" <<<"$out" || return 1
	done
}

PROBE=flashsale-readiness-probe
# A topic with replication factor RF can be created, is listed, and has a full ISR.
probe_topic() {
	local t=(timeout 20 "${TOOL[@]}" org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP"
		--command-config "$DIR/admin.properties")
	"${t[@]}" --create --if-not-exists --topic "$PROBE" --partitions 1 \
		--replication-factor "$RF" >/dev/null 2>>"$DIR/logs/readiness.log" || return 1
	"${t[@]}" --list 2>>"$DIR/logs/readiness.log" | grep -qx "$PROBE" || return 1
	local isr
	isr=$("${t[@]}" --describe --topic "$PROBE" 2>>"$DIR/logs/readiness.log" |
		sed -n 's/.*Isr: \([0-9,]*\).*/\1/p' | head -n 1)
	[[ -n $isr ]] && (($(tr ',' '\n' <<<"$isr" | grep -c .) == RF))
}

probe_delete() {
	timeout 20 "${TOOL[@]}" org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" \
		--command-config "$DIR/admin.properties" --delete --if-exists --topic "$PROBE" \
		>/dev/null 2>>"$DIR/logs/readiness.log" || warn "could not delete the probe topic $PROBE"
}

# No partition of any topic is under-replicated.
fully_replicated() {
	local out
	out=$(timeout 20 "${TOOL[@]}" org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" \
		--command-config "$DIR/admin.properties" --describe --under-replicated-partitions \
		2>>"$DIR/logs/readiness.log") || return 1
	[[ -z $out ]]
}

# The env file of services-up, if it describes this dir: refresh the pid lines.
update_env_file() {
	[[ -f $ENV_FILE ]] || return 0
	grep -qxF "FLASHSALE_KAFKA_DIR=$DIR" "$ENV_FILE" || return 0
	grep -q '^FLASHSALE_KAFKA_BROKER_PIDS=' "$ENV_FILE" || return 0
	local tmp=$ENV_FILE.tmp.$$ i pids
	pids=$(pids_line $ALL_IDS)
	{
		while IFS= read -r line; do
			case $line in
			FLASHSALE_KAFKA_BROKER_PIDS=*) echo "FLASHSALE_KAFKA_BROKER_PIDS=\"$pids\"" ;;
			FLASHSALE_KAFKA_BROKER_[0-9]_PID=*)
				i=${line#FLASHSALE_KAFKA_BROKER_}
				i=${i%%_*}
				echo "FLASHSALE_KAFKA_BROKER_${i}_PID=$(running_pid "$i" || echo -)"
				;;
			*) printf '%s\n' "$line" ;;
			esac
		done <"$ENV_FILE"
	} >"$tmp"
	mv "$tmp" "$ENV_FILE"
	log "updated FLASHSALE_KAFKA_BROKER_PIDS=\"$pids\" in $ENV_FILE"
}

case $MODE in
status)
	# shellcheck disable=SC2086
	pids=$(pids_line $IDS)
	if [[ " $pids " != *" - "* ]]; then
		log "running: broker(s) $(echo $IDS) pid(s) $pids, dir $DIR"
		echo "$BOOTSTRAP"
		exit 0
	fi
	log "not running for $DIR: broker(s) $(echo $IDS) pid(s) $pids"
	exit 3
	;;
pids)
	# shellcheck disable=SC2086
	pids=$(pids_line $IDS)
	echo "$pids"
	[[ " $pids " != *" - "* ]] || exit 3
	exit 0
	;;
esac

fetch_jars
if [[ $MODE == fetch ]]; then
	echo "$LIBS"
	exit 0
fi

if [[ -e $DIR && ! -f $MARKER ]] && [[ -n $(ls -A "$DIR" 2>/dev/null) ]]; then
	die "$DIR exists, is not empty and was not made by this script; refusing to use it"
fi
made_for=$(dir_brokers)
if [[ -n $made_for && $made_for != "$BROKERS" ]]; then
	die "$DIR holds a $made_for-broker setup but FLASHSALE_KAFKA_BROKERS=$BROKERS; use the same value, or remove it with ops/kafka/stop.sh first"
fi

to_start=()
for i in $IDS; do
	if pid=$(running_pid "$i"); then
		log "broker $i already running (pid $pid, dir $(bdir "$i"))"
	else
		to_start+=("$i")
	fi
done
if ((${#to_start[@]} == 0)); then
	[[ -z $BROKER_ID ]] || update_env_file
	echo "$BOOTSTRAP"
	exit 0
fi

for i in "${to_start[@]}"; do
	for p in "$(bport "$i")" "$(cport "$i")"; do
		if port_open "$p"; then
			die "port 127.0.0.1:$p (broker $i) is already in use by another process (set FLASHSALE_KAFKA_PORT / FLASHSALE_KAFKA_CONTROLLER_PORT, or run ops/kafka/stop.sh with the env of that broker)"
		fi
	done
done

mkdir -p "$DIR/logs"
if ((BROKERS == 1)); then
	touch "$MARKER"
else
	echo "brokers=$BROKERS" >"$MARKER"
fi

# ---------------------------------------------------------------------------------
# config (rewritten on every start; the data dir keeps its cluster id)
# ---------------------------------------------------------------------------------
# write_config I: server.properties and log4j2.properties of broker I.
write_config() {
	local i=$1 d p c
	d=$(bdir "$i") p=$(bport "$i") c=$(cport "$i")
	mkdir -p "$d/data" "$d/logs"
	if ((BROKERS == 1)); then
		cat >"$d/server.properties" <<EOC
# written by ops/kafka/start.sh - single-node KRaft broker for flashsale tests
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$c
listeners=PLAINTEXT://127.0.0.1:$p,CONTROLLER://127.0.0.1:$c
advertised.listeners=PLAINTEXT://127.0.0.1:$p,CONTROLLER://127.0.0.1:$c
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$d/data
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
# engines detect a dead group member in well under a second (issue 13; default 6000)
group.min.session.timeout.ms=500
# the same for the engines' default KIP-848 consumer protocol (issue 31; Kafka's
# defaults 45000, 45000, 5000, 5000): the broker alone times these sessions
group.consumer.min.session.timeout.ms=500
group.consumer.session.timeout.ms=600
group.consumer.min.heartbeat.interval.ms=100
group.consumer.heartbeat.interval.ms=150
auto.create.topics.enable=false
delete.topic.enable=true
num.network.threads=2
num.io.threads=4
log.retention.hours=24
log.segment.bytes=67108864
EOC
	else
		local voters j
		voters=$(for j in $ALL_IDS; do printf '%s@127.0.0.1:%s\n' "$j" "$(cport "$j")"; done | paste -sd,)
		cat >"$d/server.properties" <<EOC
# written by ops/kafka/start.sh - node $i of a $BROKERS-node KRaft cluster for flashsale
# tests (every node is broker and controller; static 3-voter quorum)
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$p,CONTROLLER://127.0.0.1:$c
advertised.listeners=PLAINTEXT://127.0.0.1:$p,CONTROLLER://127.0.0.1:$c
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$d/data
num.partitions=$PARTITIONS
default.replication.factor=$RF
min.insync.replicas=$MIN_ISR
offsets.topic.replication.factor=$RF
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=$RF
transaction.state.log.min.isr=$MIN_ISR
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=$RF
share.coordinator.state.topic.min.isr=$MIN_ISR
unclean.leader.election.enable=false
group.initial.rebalance.delay.ms=0
# engines detect a dead group member in well under a second (issue 13; default 6000)
group.min.session.timeout.ms=500
# the same for the engines' default KIP-848 consumer protocol (issue 31; Kafka's
# defaults 45000, 45000, 5000, 5000): the broker alone times these sessions
group.consumer.min.session.timeout.ms=500
group.consumer.session.timeout.ms=600
group.consumer.min.heartbeat.interval.ms=100
group.consumer.heartbeat.interval.ms=150
auto.create.topics.enable=false
delete.topic.enable=true
num.network.threads=2
num.io.threads=4
log.retention.hours=24
log.segment.bytes=67108864
# fast failure detection on loopback (Kafka's defaults: 2000, 9000, 2000, 1000, 30000, 300)
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=2500
controller.quorum.fetch.timeout.ms=1000
controller.quorum.election.timeout.ms=500
replica.lag.time.max.ms=10000
auto.leader.rebalance.enable=true
leader.imbalance.check.interval.seconds=10
EOC
	fi
	if [[ -n ${FLASHSALE_KAFKA_EXTRA_PROPERTIES:-} ]]; then
		printf '# FLASHSALE_KAFKA_EXTRA_PROPERTIES\n%s\n' "$FLASHSALE_KAFKA_EXTRA_PROPERTIES" >>"$d/server.properties"
	fi

	cat >"$d/log4j2.properties" <<EOC
# written by ops/kafka/start.sh
status = warn
name = flashsale-kafka
appender.server.type = File
appender.server.name = server
appender.server.fileName = $d/logs/server.log
appender.server.layout.type = PatternLayout
appender.server.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.server.ref = server
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
EOC
}

cat >"$DIR/tools-log4j2.properties" <<'EOF2'
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
EOF2

cat >"$DIR/admin.properties" <<'EOF2'
# written by ops/kafka/start.sh - short timeouts for CLI tools
request.timeout.ms=5000
default.api.timeout.ms=10000
EOF2

# ---------------------------------------------------------------------------------
# storage format (first start of a broker dir only)
# ---------------------------------------------------------------------------------
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

# format I: format broker I's storage unless it is formatted already.
format() {
	local i=$1 d
	d=$(bdir "$i")
	if [[ -f $d/data/meta.properties ]]; then
		log "reusing formatted storage in $d/data"
		return 0
	fi
	local mode=()
	((BROKERS == 1)) && mode=(--standalone) # dynamic quorum of one; a cluster has static voters
	log "formatting KRaft storage in $d/data (cluster id $CLUSTER_ID)"
	java -Xmx128m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
		-Dlog4j2.configurationFile="$DIR/tools-log4j2.properties" \
		-cp "$LIBS/*" kafka.tools.StorageTool format "${mode[@]}" \
		-t "$CLUSTER_ID" -c "$d/server.properties" >"$d/logs/format.log" 2>&1 || {
		cat "$d/logs/format.log" >&2
		die "kafka.tools.StorageTool format failed for broker $i"
	}
}

for i in "${to_start[@]}"; do
	write_config "$i"
	format "$i"
done

# ---------------------------------------------------------------------------------
# start
# ---------------------------------------------------------------------------------
T_START=$SECONDS
declare -A PID=()
# launch I: start broker I's JVM in the background, record its pid.
launch() {
	local i=$1 d
	d=$(bdir "$i")
	rm -f "$d/kafka.pid"
	log "starting Kafka $VERSION broker $i on 127.0.0.1:$(bport "$i") (controller 127.0.0.1:$(cport "$i"), heap $HEAP, dir $d)"
	# setsid: own session, so the broker outlives this script and its process group.
	# The inner bash writes its own pid and then becomes the JVM (exec), so the pid file
	# holds the JVM's pid even if setsid had to fork.
	(
		cd "$d"
		# shellcheck disable=SC2016 # expanded by the inner bash
		setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$d/kafka.pid" \
			java -Xms"$HEAP" -Xmx"$HEAP" "${GC_OPTS[@]}" \
			-XX:+ExitOnOutOfMemoryError -XX:ErrorFile="$d/logs/hs_err_%p.log" \
			-Djava.awt.headless=true \
			-Dkafka.logs.dir="$d/logs" \
			-Dlog4j2.configurationFile="$d/log4j2.properties" \
			-cp "$LIBS/*" kafka.Kafka "$d/server.properties" \
			</dev/null >>"$d/logs/kafka.out" 2>&1 &
	)
}

fail_start() {
	local i d
	warn "$1"
	for i in "${to_start[@]}"; do
		d=$(bdir "$i")
		warn "broker $i: last lines of $d/logs/kafka.out:"
		tail -n 20 "$d/logs/kafka.out" >&2 2>/dev/null || true
		warn "broker $i: last lines of $d/logs/server.log:"
		tail -n 30 "$d/logs/server.log" >&2 2>/dev/null || true
	done
	for i in "${to_start[@]}"; do
		[[ -n ${PID[$i]:-} ]] && kill -TERM "${PID[$i]}" 2>/dev/null || true
	done
	for i in "${to_start[@]}"; do
		[[ -n ${PID[$i]:-} ]] && { kill_bounded "${PID[$i]}" 10 "broker $i" || true; }
		rm -f "$(bdir "$i")/kafka.pid"
	done
	if ((BROKERS == 1)); then
		die "Kafka did not start; logs are in $DIR/logs"
	fi
	die "Kafka did not start; logs are in $DIR/broker-*/logs"
}

for i in "${to_start[@]}"; do launch "$i"; done
for i in "${to_start[@]}"; do
	d=$(bdir "$i")
	wait_until 10 "pid file $d/kafka.pid" test -s "$d/kafka.pid" ||
		fail_start "broker $i did not start (see $d/logs/kafka.out)"
	PID[$i]=$(cat "$d/kafka.pid")
done

# all_alive: every JVM this run started is still there.
all_alive() {
	local i
	for i in "${to_start[@]}"; do
		pid_alive "${PID[$i]}" || {
			echo "$i"
			return 1
		}
	done
}

deadline=$((SECONDS + START_TIMEOUT))
# check: a started JVM died, or the deadline passed.
check() {
	local dead
	dead=$(all_alive) || fail_start "the JVM of broker $dead exited during startup"
	((SECONDS < deadline)) || fail_start "$1 after ${START_TIMEOUT}s (see also $DIR/logs/readiness.log)"
}
for i in "${to_start[@]}"; do
	while ! port_open "$(bport "$i")"; do
		check "port $(bport "$i") of broker $i not open"
		sleep 0.2
	done
done

if ((BROKERS == 1)); then
	until broker_answers; do
		check "no answer to a topic list"
		sleep 0.5
	done
else
	# shellcheck disable=SC2086
	until brokers_registered $IDS; do
		check "broker(s) $(echo $IDS) not registered"
		sleep 0.5
	done
	if [[ -z $BROKER_ID ]]; then
		until probe_topic; do
			check "no topic with replication factor $RF and a full ISR"
			sleep 0.5
		done
		probe_delete
		log "cluster of $BROKERS brokers ready: registered, topic with replication factor $RF created, listed, ISR full"
	else
		log "broker $BROKER_ID registered again; waiting for its replicas to catch up"
		until fully_replicated; do
			if ((SECONDS >= deadline)); then
				warn "partitions still under-replicated after ${START_TIMEOUT}s (the broker runs; see TopicCommand --describe --under-replicated-partitions)"
				break
			fi
			all_alive >/dev/null || fail_start "the JVM of broker $BROKER_ID exited"
			sleep 0.5
		done
		update_env_file
	fi
fi

pids=()
for i in "${to_start[@]}"; do pids+=("$i:${PID[$i]}"); done
log "ready in $((SECONDS - T_START))s (broker:pid ${pids[*]}) - logs: $(bdir "${to_start[0]}")/logs/server.log"
echo "$BOOTSTRAP"
