#!/usr/bin/env bash
# ops/kafka/run-class.sh - run a Kafka tool class from the cached Kafka jars
# (the equivalent of the tarball's bin/kafka-*.sh scripts), with quiet logging.
#
# Usage: ops/kafka/run-class.sh MAIN_CLASS [ARGS...]
#
# Examples (bootstrap 127.0.0.1:19092):
#   ops/kafka/run-class.sh org.apache.kafka.tools.TopicCommand \
#       --bootstrap-server 127.0.0.1:19092 --create --topic t1 --partitions 8
#   ops/kafka/run-class.sh org.apache.kafka.tools.TopicCommand \
#       --bootstrap-server 127.0.0.1:19092 --list
#   ops/kafka/run-class.sh org.apache.kafka.tools.GetOffsetShell \
#       --bootstrap-server 127.0.0.1:19092 --topic t1
#   ops/kafka/run-class.sh org.apache.kafka.tools.consumer.ConsoleConsumer \
#       --bootstrap-server 127.0.0.1:19092 --topic t1 --from-beginning --timeout-ms 5000
#   ops/kafka/run-class.sh org.apache.kafka.tools.MetadataQuorumCommand \
#       --bootstrap-server 127.0.0.1:19092 describe --status
#   ops/kafka/run-class.sh kafka.tools.StorageTool random-uuid
#
# Environment: FLASHSALE_KAFKA_VERSION [4.1.1], FLASHSALE_CACHE [$HOME/.cache/flashsale]
# (the jars are fetched first if missing), FLASHSALE_KAFKA_TOOL_HEAP [256m].
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034 # read by lib.sh
OPS_NAME=kafka/run-class
# shellcheck source-path=SCRIPTDIR/.. source=lib.sh
. "$HERE/../lib.sh"

case ${1:-} in
"" | -h | --help)
	usage_from_header "${BASH_SOURCE[0]}"
	[[ -n ${1:-} ]] && exit 0 || exit 2
	;;
esac

VERSION=${FLASHSALE_KAFKA_VERSION:-4.1.1}
CACHE=${FLASHSALE_CACHE:-$HOME/.cache/flashsale}
LIBS=$CACHE/kafka-$VERSION/libs
if [[ ! -f $LIBS/.complete ]]; then
	"$HERE/start.sh" --fetch-only >/dev/null
fi

CONF=$CACHE/kafka-$VERSION/tools-log4j2.properties
if [[ ! -f $CONF ]]; then
	cat >"$CONF.tmp.$$" <<'EOF'
# written by ops/kafka/run-class.sh - CLI tools: warnings only, on stderr
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
	mv "$CONF.tmp.$$" "$CONF"
fi

exec java -Xmx"${FLASHSALE_KAFKA_TOOL_HEAP:-256m}" -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
	-Dlog4j2.configurationFile="$CONF" -cp "$LIBS/*" "$@"
