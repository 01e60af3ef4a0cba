# Two entry points (see README): `make demo` and `make test`. Both create the virtualenv when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch; a GPU user installs a CUDA build first (README, "GPU").
TORCH_SPEC ?= torch==2.13.0
# TRL 1.12 (the last TRL with PPO) goes to $(VENV)/trl112, off sys.path: only the TRL field-parity test reads it.
# The bench extra brings TRL 1.16 for the same test and the benchmarks.
TRL112_SPEC ?= trl==1.12.0
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120

.PHONY: demo test lint bench setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev,triton,ray,bench]"
	$(BIN)/python -m pip install --quiet --no-deps --target $(VENV)/trl112 $(TRL112_SPEC)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rlhf run configs/default.yaml

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
