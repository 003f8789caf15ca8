#!/usr/bin/env bash
# Installs the real servers the test suite starts on free loopback ports (tests/services/):
# Redis 7, Valkey 8 (bookworm-backports), RabbitMQ, Mosquitto, PostgreSQL 15, etcd, NATS,
# kcat and rsync (the code-change benchmark's peer) from Debian's packages, Kafka 4.4.0's jars from Maven Central into
# ${HYBRIDBUS_SERVICES_DIR:-$HOME/.cache/hybridbus/services}/kafka/libs, and grpcurl and an
# OpenTelemetry Collector (tests/services/otelcol) built from the Go module proxy into
# .../services/bin.
#
# Idempotent: what is installed is left alone, so a second run takes well under a second.
# Needs root (or sudo) for apt-get; Debian bookworm (CI) is what it is written for. The
# packages' own services are never started (a policy-rc.d refuses them during the install):
# the tests start every server themselves, as the user running them.
set -euo pipefail
cd "$(dirname "$0")"

services_dir=${HYBRIDBUS_SERVICES_DIR:-$HOME/.cache/hybridbus/services}
pg_bin=/usr/lib/postgresql/15/bin

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)

have() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }

need=()
need_backports=()
have redis-server || need+=(redis-server)
have redis-cli || need+=(redis-tools)
have valkey-server || need_backports+=(valkey-server)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need+=(rabbitmq-server)
have mosquitto || need+=(mosquitto)
have mosquitto_pub || need+=(mosquitto-clients)
[ -x "$pg_bin/postgres" ] || need+=(postgresql-15)
have etcd || need+=(etcd-server)
have nats-server || need+=(nats-server)
have kcat || need+=(kcat)
have rsync || need+=(rsync)  # benchmarks/changes.py's peer
have java || need+=(default-jre-headless)
have mvn || need+=(maven)

if [ ${#need[@]} -gt 0 ] || [ ${#need_backports[@]} -gt 0 ]; then
  echo "install-services: apt-get install ${need[*]} ${need_backports[*]}"
  if [ ${#sudo[@]} -gt 0 ] && ! command -v sudo >/dev/null; then
    echo "install-services: not root and no sudo: install those as root, then run me again" >&2
    exit 1
  fi
  if [ ${#need_backports[@]} -gt 0 ] && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo 'deb http://deb.debian.org/debian bookworm-backports main' \
      | "${sudo[@]}" tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
  fi
  # Packages must not start their own daemons (ports 5672, 1883, 6379, 5432, 2379 ...).
  made_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${sudo[@]}" chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  trap '[ -z "$made_policy" ] || "${sudo[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
  "${sudo[@]}" apt-get update -qq
  apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends)
  [ ${#need[@]} -eq 0 ] || "${apt[@]}" "${need[@]}"
  [ ${#need_backports[@]} -eq 0 ] || "${apt[@]}" -t bookworm-backports "${need_backports[@]}"
fi

# grpcurl (the gRPC tests' second toolchain: a Go client reading protos/), built from the
# Go module proxy into $services_dir/bin (tests/gateways/grpc_support.py looks there).
grpcurl_version=v1.9.3
if [ ! -x "$services_dir/bin/grpcurl" ] || [ ! -f "$services_dir/bin/.grpcurl-$grpcurl_version" ]; then
  if command -v go >/dev/null; then
    echo "install-services: grpcurl $grpcurl_version -> $services_dir/bin"
    mkdir -p "$services_dir/bin"
    GOBIN="$services_dir/bin" go install \
      "github.com/fullstorydev/grpcurl/cmd/grpcurl@$grpcurl_version"
    touch "$services_dir/bin/.grpcurl-$grpcurl_version"
  else
    echo "install-services: no Go toolchain: grpcurl not built (its tests skip or fail)" >&2
  fi
fi

# The OpenTelemetry Collector of the tracing tests (tests/services/collector.py): the OTLP
# receiver and the file exporter, built with plain `go build` from tests/services/otelcol/
# (main.go, go.mod, go.sum: one collector release) and the Go module proxy into
# $services_dir/bin/otelcol; built again when that source changes (a stamp of its hash).
otelcol_src=../tests/services/otelcol
otelcol_hash=$(cat "$otelcol_src/main.go" "$otelcol_src/go.mod" "$otelcol_src/go.sum" | sha256sum | cut -c1-16)
if [ ! -x "$services_dir/bin/otelcol" ] || [ ! -f "$services_dir/bin/.otelcol-$otelcol_hash" ]; then
  if command -v go >/dev/null; then
    echo "install-services: the OpenTelemetry Collector (tests/services/otelcol) -> $services_dir/bin"
    mkdir -p "$services_dir/bin"
    (cd "$otelcol_src" && go build -trimpath -ldflags='-s -w' -o "$services_dir/bin/otelcol" .)
    rm -f "$services_dir/bin"/.otelcol-*
    touch "$services_dir/bin/.otelcol-$otelcol_hash"
  else
    echo "install-services: no Go toolchain: otelcol not built (its tests skip or fail)" >&2
  fi
fi

# Kafka: the broker's jars (no bin/, no config/: tests/services.py writes server.properties).
libs="$services_dir/kafka/libs"
if [ ! -f "$libs/.complete-4.4.0" ]; then
  echo "install-services: Kafka 4.4.0 jars -> $libs"
  mkdir -p "$services_dir/kafka"
  rm -rf "$libs"
  mvn -B -q -Dstyle.color=never -f kafka/pom.xml dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$libs"
  cp kafka/log4j2.properties "$services_dir/kafka/log4j2.properties"
  touch "$libs/.complete-4.4.0"
fi
cp -u kafka/log4j2.properties "$services_dir/kafka/log4j2.properties"

# The Node clients of the Yjs tests (tests/yjs/): the stock y-websocket provider, yjs and ws,
# at the exact versions of tests/js/package-lock.json.
if command -v npm >/dev/null; then
  if [ ! -f ../tests/js/node_modules/.package-lock.json ] \
     || [ ../tests/js/package-lock.json -nt ../tests/js/node_modules/.package-lock.json ]; then
    echo "install-services: npm ci --prefix tests/js"
    npm ci --prefix ../tests/js --no-audit --no-fund --loglevel=error
  fi
  # The browser client's dev dependencies (TypeScript, for tests/clients/test_js_client.py).
  if [ ! -f ../clients/js/node_modules/.package-lock.json ] \
     || [ ../clients/js/package-lock.json -nt ../clients/js/node_modules/.package-lock.json ]; then
    echo "install-services: npm ci --prefix clients/js"
    npm ci --prefix ../clients/js --no-audit --no-fund --loglevel=error
  fi
else
  echo "install-services: no npm: the Yjs tests' Node clients not installed (they skip or fail)" >&2
fi
