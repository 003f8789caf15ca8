#!/bin/sh
# Install the peers the server benchmark runs beside hybridbus (`make bench` calls this).
#
# - Centrifugo v6.9.1, built from its Go module into <repo>/.bench/bin when Go is present
#   (~3 minutes the first time, cached after: skipped when that version is already there);
# - nats-server (NATS, JetStream) and redis-server from apt-get when missing and we are root.
#
# Whatever cannot be installed is reported; the benchmark then skips the cases of that peer.
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN="$ROOT/.bench/bin"
VERSION=6.9.1
MODULE=github.com/centrifugal/centrifugo/v6

mkdir -p "$BIN"
if [ -x "$BIN/centrifugo" ] && "$BIN/centrifugo" version 2>/dev/null | grep -q "$VERSION"; then
    echo "Centrifugo $VERSION: $BIN/centrifugo"
elif command -v go >/dev/null 2>&1; then
    echo "Building Centrifugo $VERSION from the Go module proxy into $BIN (~3 min the first time)"
    GOBIN="$BIN" go install -ldflags "-X $MODULE/internal/build.Version=$VERSION" "$MODULE@v$VERSION"
else
    echo "Go is not installed: the Centrifugo cases will be skipped"
fi

missing=""
command -v nats-server >/dev/null 2>&1 || missing="$missing nats-server"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
if [ -n "$missing" ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "Installing$missing with apt-get"
        # shellcheck disable=SC2086 # one word per package
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing \
            || { apt-get update && DEBIAN_FRONTEND=noninteractive \
                 apt-get install -y --no-install-recommends $missing; } \
            || echo "Could not install$missing: those cases will be skipped"
    else
        echo "Not installed:$missing (install them for the NATS / Redis cases)"
    fi
fi
