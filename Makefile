# hybridbus — `make test` runs every check on a fresh machine with Python 3.11+ and make.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: test lint typecheck imports pytest bench serve services grpc clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,grpc-build]'
	$(BIN)/python scripts/build_grpc.py
	touch $(STAMP)

# The gRPC code generated from protos/ (gitignored): again after editing a .proto.
grpc: $(STAMP)
	$(BIN)/python scripts/build_grpc.py

test: lint typecheck imports pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

imports: $(STAMP)
	$(BIN)/lint-imports

pytest: $(STAMP)
	$(BIN)/pytest

# The in-process groups (~2 min), then the server beside Centrifugo, NATS, Redis and bare
# aiohttp (~25 min; benchmarks/peers/install.sh builds or installs the peers first), then the
# consumer groups beside Redis Streams (~3 min).
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	sh benchmarks/peers/install.sh
	$(BIN)/python -m benchmarks.run
	$(BIN)/python -m benchmarks.run server
	$(BIN)/python -m benchmarks.run groups

# The embedded default: sqlite in ./hybridbus-data, on 127.0.0.1:8080, with the development
# settings of examples/dev.toml (a dev JWT secret, anonymous clients in tenant "public").
serve: $(STAMP)
	$(BIN)/hybridbus serve --config examples/dev.toml

# The real servers the tests start (Redis, Valkey, RabbitMQ, Mosquitto, PostgreSQL, etcd, NATS,
# Kafka): apt-get (as root, or with sudo) and Kafka's jars from Maven; quick when installed.
services:
	bash scripts/install-services.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
