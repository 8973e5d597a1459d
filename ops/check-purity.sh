#!/usr/bin/env bash
# ops/check-purity.sh - fail if the engine's pure core (`flashsale-core`, engine/core/)
# depends, directly or through any other crate, on an I/O runtime or client: tokio,
# rdkafka, tokio-postgres, deadpool-postgres, axum or hyper. The core must stay a
# deterministic function of the log (ARCHITECTURE.md); the compiler can only
# keep it so if those crates are not in its dependency tree at all.
#
# Usage: ops/check-purity.sh   (run by `make test`; needs only cargo, no build)
set -euo pipefail
cd "$(dirname "$0")/.."
forbidden='^(tokio|rdkafka|tokio-postgres|deadpool-postgres|axum|hyper)$'
deps=$(cargo tree -p flashsale-core --edges normal,build --prefix none --format '{p}' --offline 2>/dev/null ||
	cargo tree -p flashsale-core --edges normal,build --prefix none --format '{p}')
bad=$(awk '{print $1}' <<<"$deps" | sort -u | grep -E "$forbidden" || true)
if [[ -n $bad ]]; then
	echo "check-purity: flashsale-core (engine/core) must not depend on: $(tr '\n' ' ' <<<"$bad")" >&2
	echo "check-purity: the path to each (cargo tree -i):" >&2
	for c in $bad; do cargo tree -p flashsale-core -i "$c" --edges normal,build >&2 || true; done
	echo "check-purity: move the I/O into a host (engine/src, flashsale-engine) and feed the core values" >&2
	exit 1
fi
n=$(awk '{print $1}' <<<"$deps" | sort -u | wc -l)
echo "check-purity: flashsale-core is pure ($n crates in its tree, none of tokio/rdkafka/postgres/axum/hyper)" >&2
