# The two commands a fresh clone needs: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
# llama.cpp built for a portable x86-64 (AVX2), not -march=native: some virtual CPUs
# advertise AMX/AVX-512 features that then fault at run time.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
# Python's bytecode cache on, whatever the shell says (some images set this to turn it off):
# the suite starts hundreds of Python processes (Ray workers, the CLI, servers), and without
# the cache each one compiles Keel, and pytest rewrites its plugins, from source again.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test test-fast lint bench soak setup system-packages browser apt-package clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	@$(MAKE) --no-print-directory system-packages
	$(PIP) install -c constraints.txt -e '.[dev,local,charts]' 2>$(VENV)/pip.log || (cat $(VENV)/pip.log; exit 1)
	$(BIN)/python -c "import ray, pydantic, fsspec, s3fs, moto, pytest" 
	touch $(STAMP)

setup: $(STAMP)

# What pip cannot install, from Debian where we are root and it is missing: bubblewrap (the
# sandbox) for everything, Chromium (the console's browser tests drive the system's browser)
# for the tests only.
system-packages:
	@$(MAKE) --no-print-directory apt-package APT_PKG=bubblewrap APT_CMD=bwrap \
	  APT_WHY="tools that write will be refused"

browser:
	@$(MAKE) --no-print-directory apt-package APT_PKG=chromium APT_CMD=chromium \
	  APT_WHY="the console's browser tests fail"

apt-package:
	@if ! command -v $(APT_CMD) >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q $(APT_PKG) >/dev/null 2>&1 || \
	    (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $(APT_PKG) >/dev/null 2>&1) || true; \
	  fi; \
	  command -v $(APT_CMD) >/dev/null || echo "warning: $(APT_PKG) missing: $(APT_WHY)"; \
	fi

demo: $(STAMP)
	$(BIN)/keel demo --auto-approve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Two tiers: the fast one (the engine's semantics in-process, no Ray) fails fast, beside
# lint (each is one process: on 2 cores they overlap without slowing each other); then Ray,
# clusters, S3 and the long runs, on two xdist workers, each with a Ray of its own (one
# worker leaves a core idle while its test waits on a process start; two keep both busy).
# pytest exits 5 when it selects nothing, and make fails on it.
test: $(STAMP) browser
	@$(MAKE) --no-print-directory -j2 --output-sync=target lint test-fast
	$(BIN)/python -m pytest -m "ray or slow" -n 2 --no-loadscope-reorder

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not ray and not slow"

bench: $(STAMP)
	$(PIP) install -c constraints.txt -e '.[dev,local,charts,bench,embeddings]' 2>$(VENV)/pip.log || (cat $(VENV)/pip.log; exit 1)
	$(BIN)/python -m keel.evals.retrieval --out bench/.out
	$(BIN)/python -m keel.evals.routing --out bench/.out
	$(BIN)/python -m bench.orchestration
	$(BIN)/python -m bench.node_hosts
	$(BIN)/python -m bench.router_overhead
	$(BIN)/python -m bench.router_streaming
	$(BIN)/python -m bench.local_model
	$(BIN)/python -m bench.batch_throughput
	$(BIN)/python -m bench.orchestrator_shards
	$(BIN)/python -m bench.batch_throughput --pin
	$(BIN)/python -m bench.cost_breakdown

# The engine simulator at length: 100,000 seeded schedules (about 50 minutes on 2 cores).
soak: $(STAMP)
	$(BIN)/python -m keel.testing.simrun --schedules 100000 --workers 2

clean:
	rm -rf $(VENV) .keel .mypy_cache .pytest_cache .ruff_cache
