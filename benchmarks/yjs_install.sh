#!/bin/sh
# Install the peers of the Yjs benchmark (benchmarks/yjs.py) beside hybridbus:
#
# - pycrdt-websocket 0.16.5 with uvicorn[standard] 0.54.0, in a virtualenv of its own
#   (<repo>/.bench/yjs-venv), so that its pins never touch the project's environment;
# - the Node y-websocket server, @y/websocket-server 0.1.1 (yjs 13.6.33), from
#   benchmarks/js/package-lock.json (`npm ci`).
#
# Whatever cannot be installed is reported; the benchmark then skips that peer.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV="$ROOT/.bench/yjs-venv"
PYTHON=${PYTHON:-python3}

if "$VENV/bin/python" -c "import importlib.metadata as m; assert m.version('pycrdt-websocket') == '0.16.5'" 2>/dev/null; then
    echo "pycrdt-websocket 0.16.5: $VENV"
else
    echo "Installing pycrdt-websocket 0.16.5 and uvicorn 0.54.0 into $VENV"
    { "$PYTHON" -m venv "$VENV" \
        && "$VENV/bin/pip" install --quiet "pycrdt-websocket==0.16.5" "uvicorn[standard]==0.54.0"; } \
        || echo "Could not install pycrdt-websocket: its cases will be skipped"
fi

if command -v npm >/dev/null 2>&1; then
    npm ci --prefix "$ROOT/benchmarks/js" --no-audit --no-fund --loglevel=error \
        || echo "npm ci failed: the y-websocket-server cases will be skipped"
else
    echo "npm is not installed: the y-websocket-server cases will be skipped"
fi
