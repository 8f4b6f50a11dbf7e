# NanoFlux: every target installs what it needs into .venv first, so each works on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; override for a GPU machine, e.g. `make install TORCH=torch`.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install install-core demo lint test test-fast clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# What `nanoflux build` needs, the embedded default included, and nothing else: the core dependencies. llama-cpp-python
# compiles llama.cpp here (a C/C++ compiler is needed; pip fetches cmake when there is none): the core install took
# ~6.5 min on a quiet 2-core machine with an empty pip cache (2026-12-04).
install-core: $(BIN)/python
	@command -v cc >/dev/null || command -v gcc >/dev/null || command -v clang >/dev/null || echo "no C compiler found: llama-cpp-python compiles llama.cpp at install time (Debian/Ubuntu: apt-get install build-essential cmake)"
	# torch first, so that the project's `torch>=2.4` is already satisfied and pip pulls no CUDA build.
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e .

# Everything the tests, training, evaluation and the Space need: the core plus the `test` extra (train + space + test tools).
install: $(BIN)/python
	# The sandbox for the Judge's programs prefers bubblewrap; without it (and without root) the kernel layers are used.
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; } || echo "bubblewrap not installed: the sandbox uses the kernel's layers (Landlock, seccomp) where they are available"
	# torch first, so that the project's `torch>=2.4` is already satisfied and pip pulls no CUDA build.
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"

## Build a small medical dataset on the embedded default (SmolLM2-135M under a managed llama.cpp server, CPU, no network).
## Installs only the core dependencies (no training, Space or test packages).
demo: install-core
	$(BIN)/nanoflux build --config configs/local.yaml $(ARGS)

## Formatting and lint (ruff, settings in pyproject.toml): `ruff format .` fixes the first, `ruff check --fix .` much
## of the second.
lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

## Lint, then the whole test suite, slow real-model tests included (what CI runs).
test: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

## Only the fast tests.
test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

## Benchmarks, ~18 minutes on a quiet 2-core machine (measured 2026-12-04): build throughput against the endpoint bound and against distilabel (run from
## benchmarks/.venv-distilabel, made on first use, when it does not import here), novelty scaling, training cost.
## Prints one table and writes benchmarks/results/*.json; pass e.g. ARGS="--parts throughput --smoke".
.PHONY: bench
bench: install
	$(BIN)/python -m benchmarks.run $(ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache

## The embedded engine: llama.cpp against the former in-process transformers engine on the demo build (2 repeats each,
## ~6 minutes on a quiet 2-core machine, measured 2026-12-04); writes benchmarks/results/embedded_engine.json.
.PHONY: bench-embedded
bench-embedded: install
	$(BIN)/python -m benchmarks.embedded_engine $(ARGS)
