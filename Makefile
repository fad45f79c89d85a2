# sft: `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# torch first, pinned, so pip does not pull a newer multi-GB build; override for your platform/CUDA.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# Marker expression of `make test`. Also skip the heavy tests: make test MARKS="not slow and not subprocess"
# (markers: slow, subprocess, multirun, ddp; see [tool.pytest.ini_options] in pyproject.toml).
MARKS ?= not slow
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run test test-slow test-all lint bench clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

install: $(VENV)/.installed ## Create .venv and install sft with dev tools (idempotent)

run: install ## Fine-tune the offline default (packaged MiniLM on the packaged sample); ARGS="model=bert data=sst2 ..."
	$(PY) -m sft.run $(ARGS)

test: install ## Run the tests not marked slow; PYTEST_ARGS="-k resume"; MARKS="not slow and not subprocess" skips more
	$(PY) -m pytest -m "$(MARKS)" $(PYTEST_ARGS)

test-slow: install ## Run only the slow tests (real SST-2 fine-tune, installed-copy check)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-all: install ## Run every test
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install ## Lint: ruff, and import-linter contracts (pyproject.toml: layers, no cycle, no Hydra below the pipeline)
	$(VENV)/bin/ruff check sft tests bench hydra_plugins
	$(VENV)/bin/lint-imports

bench: install ## Benchmarks: text (vs HF Trainer, plain loop), images (vs plain loop), cached probe
	$(PY) bench/bench_text.py
	$(PY) bench/bench_image.py
	@if [ -f bench/bench_probe.py ]; then $(PY) bench/bench_probe.py; fi

clean: ## Remove caches and build files (keeps .venv and outputs/)
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .import_linter_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
