# dotsd: `make demo` runs dotsd on embedded defaults; `make test` runs every check.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: all venv peers demo test lint typecheck unit suite bench bench-loss clean

all: test

# The editable install also compiles the optional C accelerators in place
# (src/dotsd/_speedups); it is redone when their sources change.
$(STAMP): pyproject.toml setup.py $(wildcard src/dotsd/_speedups/*.c)
	@scripts/install-build-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@$(BIN)/python -m dotsd._speedups >&2
	touch $(STAMP)

venv: $(STAMP)

# The independent peers the tests talk to: Debian packages (installed only as root) and
# aiocoap's DTLS binding (DTLSSocket builds tinydtls with autoconf; skipped if it cannot).
peers: venv
	@scripts/install-peers.sh
	@$(BIN)/python -c "import DTLSSocket" 2>/dev/null || \
		$(BIN)/python -m pip install -q DTLSSocket 2>/dev/null || \
		echo "peers: DTLSSocket not installed; aiocoap DTLS interop tests will skip" >&2

demo: venv
	$(BIN)/dotsd demo

# lint-imports checks the layers contract of pyproject.toml ([tool.importlinter]): an import
# from a lower layer into a higher one fails the build (src/dotsd/README.md).
lint: venv
	$(BIN)/ruff check src tests scripts $(wildcard bench)
	$(BIN)/lint-imports --no-logo

typecheck: venv
	$(BIN)/mypy

# The test tiers, by pytest marker (pyproject.toml): `make unit` runs the fast pure tests
# (no sockets, no peers, no sanitizer build); `make test` runs every test.
UNIT_TIER := not network and not interop and not slow

# Tests run as on a fresh machine: without the interactive shell's PYTHONUNBUFFERED and
# PYTHONDONTWRITEBYTECODE, which hide bugs (buffered output flushed at exit, for one).
PYTEST := env -u PYTHONUNBUFFERED -u PYTHONDONTWRITEBYTECODE $(BIN)/pytest

unit: venv
	$(PYTEST) -q -m "$(UNIT_TIER)"

# The tests of the paths the C accelerators replace run once more in pure Python, so the
# fallback of a machine without a compiler stays right.
PURE_TESTS := tests/test_dtls_connection.py tests/test_dtls_records.py \
	tests/test_transport_dtls.py tests/test_transport_datagram.py tests/test_transport_udp.py \
	tests/test_node_fast_path.py

# Every tier: unit, network (loopback sockets, dotsd processes), interop (libcoap, aiocoap:
# `peers` installs them) and slow.
suite: venv peers
	$(PYTEST) -q
	DOTSD_PURE_PYTHON=1 $(PYTEST) -q $(PURE_TESTS)

test: lint typecheck suite

bench: venv peers
	$(BIN)/python -m bench coap

# Mitigation requests over a lossy 50 ms path, dotsd against libcoap (bench/README.md, "loss"):
# root only (network namespaces, raw sockets); ~20 min. `make bench-loss BENCH_LOSS_ARGS=--quick`
# for 5 trials per point. Results go to bench/results/loss-*.{md,json,png}.
BENCH_LOSS_ARGS ?=
bench-loss: venv
	@[ "$$(id -u)" -eq 0 ] || { echo "bench-loss: needs root (network namespaces, raw sockets)" >&2; exit 2; }
	@command -v ip >/dev/null && ip netns list >/dev/null 2>&1 || \
		{ echo "bench-loss: needs iproute2 with network namespaces (ip netns)" >&2; exit 2; }
	@scripts/debian-packages.sh "bench-loss cannot turn veth offloads off" ethtool
	@scripts/install-peers.sh
	@$(BIN)/python -c "import matplotlib" 2>/dev/null || $(BIN)/python -m pip install -q -e '.[dev,bench]' || \
		echo "bench-loss: matplotlib not installed: the tables are written without the plot" >&2
	$(BIN)/python -m bench loss $(BENCH_LOSS_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .mypy_cache .ruff_cache .pytest_cache \
		.import_linter_cache
