PY ?= python3
PIP ?= $(PY) -m pip
PYTEST_ARGS ?=

.PHONY: help install browser-deps lint test soak bench quickstart

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install:  ## install the package and its dev tools (torch pinned to the CPU build on this machine)
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[dev]"

browser-deps:  ## Debian chromium + chromium-driver for the `browser` tests, only when missing
	bash scripts/browser_deps.sh

lint:  ## ruff check, ruff format --check, import-linter contracts (layers, no cycles)
	ruff check .
	ruff format --check .
	lint-imports

test: install browser-deps  ## lint, then the full test suite minus the soak; exit 5 (no tests) fails
	$(MAKE) lint
	$(PY) -m pytest -m "not soak" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

soak: install  ## bounded serving soak (20k requests or 5 minutes on loopback)
	$(PY) -m pytest -m soak -s

bench: install  ## every benchmark in bench/
	for f in bench/bench_*.py; do $(PY) $$f || exit 1; done

quickstart: install  ## index the bundled sample KB, train, evaluate, serve and link, all on embedded defaults
	mel quickstart
