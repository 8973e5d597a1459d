#!/usr/bin/env bash
# Installs what the build and the tests need when it is missing (Debian packages):
# a Rust toolchain, a C/C++ toolchain and cmake (vendored librdkafka), Java 17 and
# Maven (Apache Kafka), PostgreSQL 15 (ops/postgres/start.sh installs it itself).
# Usage: ops/ensure-tools.sh
set -euo pipefail
missing=()
command -v cargo >/dev/null || missing+=(cargo rustc)
command -v cc >/dev/null || missing+=(build-essential)
command -v c++ >/dev/null || missing+=(g++)
command -v cmake >/dev/null || missing+=(cmake)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
if ((${#missing[@]})); then
  echo "ensure-tools: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "ensure-tools: $(cargo --version), $(java -version 2>&1 | head -1)" >&2
