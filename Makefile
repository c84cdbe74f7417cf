# The two commands: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo live test lint bench bench-redis servers clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/python examples/data_agent.py

# The live page: a bridge in memory fed by the demo agent; serves until Ctrl-C.
live: setup
	$(BIN)/python examples/live_demo.py

lint: setup
	$(BIN)/ruff check otel_events tests examples benchmarks
	$(BIN)/mypy --strict otel_events

# Installs (apt-get, go build through the module proxy) and checks the real servers the
# end-to-end tests start: Jaeger, Prometheus, Alertmanager, Chromium.
servers:
	bash scripts/install-servers.sh
	bash scripts/install-redis.sh
	bash scripts/install-codex.sh

test: setup lint servers
	$(BIN)/pytest -q

# The peers (Logfire, opentelemetry-util-genai) live in the `bench` extra, not in [dev].
$(BIN)/.bench-installed: $(BIN)/.installed pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

bench: setup $(BIN)/.bench-installed
	$(BIN)/python benchmarks/bench_emitter.py
	$(BIN)/python benchmarks/bench_peers.py --callgrind
	$(BIN)/python benchmarks/bench_growth.py
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_bridge.py
	$(BIN)/python benchmarks/bench_import.py
	$(BIN)/python benchmarks/bench_page.py

# Two bridge replicas on Redis beside the in-memory bridge and Centrifugo (built once
# through the Go module proxy by scripts/install-centrifugo.sh, about 2 minutes).
bench-redis: setup servers
	bash scripts/install-centrifugo.sh
	$(BIN)/python benchmarks/bench_redis.py

clean:
	rm -rf $(VENV) .cache out
