#!/usr/bin/env bash
# Installs what the build and the tests need when it is missing (Debian packages):
# a Rust toolchain, a C/C++ toolchain and cmake (vendored librdkafka), Java 17 and
# Maven (Apache Kafka), Debian's `chromium` (browser tests of the console and of the
# bench HTML report), `wrk` (benches/scripts), PostgreSQL 15 (ops/postgres/start.sh
# installs it itself), and Schemathesis (the contract check, ops/contract.sh), pinned,
# in a Python venv at ~/.cache/flashsale/venv (FLASHSALE_VENV overrides it; pip from
# PyPI).
# Usage: ops/ensure-tools.sh
# Skips everything that is already there (one `command -v` per tool); otherwise runs
# `apt-get update` first (a fresh image has no package lists), then one quiet
# `apt-get install` of what is missing. Needs root. Debian package names (on Ubuntu,
# `chromium` is a snap wrapper; install a real Chromium yourself there).
set -euo pipefail
case ${1:-} in
-h | --help)
  sed -n '2,/^[^#]/{/^#/!q;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
  exit 0
  ;;
esac
missing=()
command -v cargo >/dev/null || missing+=(cargo rustc)
command -v cc >/dev/null || missing+=(build-essential)
command -v c++ >/dev/null || missing+=(g++)
command -v cmake >/dev/null || missing+=(cmake)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
# `python3 -m venv` needs ensurepip, a package of its own on Debian.
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v chromium >/dev/null || missing+=(chromium)
command -v wrk >/dev/null || missing+=(wrk)
if ((${#missing[@]})); then
  echo "ensure-tools: installing ${missing[*]} (apt-get update, then apt-get install)" >&2
  export DEBIAN_FRONTEND=noninteractive
  t0=$SECONDS
  apt-get update -qq >/dev/null
  apt-get install -y -qq -o Dpkg::Use-Pty=0 "${missing[@]}" >/dev/null
  echo "ensure-tools: installed ${missing[*]} in $((SECONDS - t0))s" >&2
fi
# Schemathesis, pinned (ops/contract.sh checks the same version).
SCHEMATHESIS_VERSION=4.32.5
venv=${FLASHSALE_VENV:-$HOME/.cache/flashsale/venv}
if [[ $("$venv/bin/schemathesis" --version 2>/dev/null | awk '{print $NF}') != "$SCHEMATHESIS_VERSION" ]]; then
  echo "ensure-tools: installing Schemathesis $SCHEMATHESIS_VERSION into $venv (pip)" >&2
  t0=$SECONDS
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
  echo "ensure-tools: installed Schemathesis in $((SECONDS - t0))s" >&2
fi
echo "ensure-tools: $(cargo --version), $(java -version 2>&1 | head -1)," \
  "$(chromium --version 2>/dev/null | head -1), $(wrk --version 2>&1 | head -1)," \
  "$("$venv/bin/schemathesis" --version 2>&1 | head -1)" >&2
