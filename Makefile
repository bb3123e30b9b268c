# runner-platform — every task a developer or CI runs. The venv installs itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)
STACK ?= dev

.PHONY: setup plan check lint typecheck contracts test schema docs clean k8s-bins localenv-deps \
	bench bench-ingest bench-verifier bench-oidc

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@rm -f $(VENV)/.installed-*
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --constraint constraints.txt --editable '.[dev]'
	@touch $@

setup: $(STAMP) ## Create the virtualenv and install everything

plan: $(STAMP) ## What STACK would create, and the policy verdict (no cloud access)
	$(PY) -m localenv.plan --stack $(STACK)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

contracts: $(STAMP)
	$(VENV)/bin/lint-imports

k8s-bins: ## Build kube-apiserver & co., etcd, KWOK, Karpenter-KWOK from Go modules (cached)
	@bash localenv/build-k8s.sh >/dev/null


localenv-deps: ## Debian packages the local environment runs (redis-server, postgresql)
	@missing=""; command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	  if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then \
	      apt-get install -y --no-install-recommends $$missing >/dev/null 2>&1 || \
	      { apt-get update >/dev/null && apt-get install -y --no-install-recommends $$missing; }; \
	    else echo "missing Debian packages:$$missing (sudo apt-get install$$missing)" >&2; exit 1; fi; \
	  fi

test: $(STAMP) localenv-deps k8s-bins
	$(VENV)/bin/pytest

check: lint typecheck contracts test ## Everything CI runs: lint, types, layers, tests

bench: bench-ingest bench-verifier bench-oidc ## All benchmarks; figures in bench/results/*.json

bench-ingest: $(STAMP) localenv-deps ## Durable deliveries/s on one core, p50/p99 at 2,000/s
	$(PY) bench/ingest.py

bench-verifier: $(STAMP) localenv-deps ## Verifier cache-hit latency and API calls per 1,000 jobs
	$(PY) bench/verifier.py

bench-oidc: $(STAMP) ## GitHub OIDC validations/s with a warm JWKS cache, one core
	$(PY) bench/oidc.py

schema: $(STAMP) ## Regenerate the JSON Schema of the stack config
	$(PY) -m controller.schema json > docs/schema/platform-spec.schema.json

docs: schema ## Regenerate the configuration reference
	$(PY) -m controller.schema markdown > docs/configuration.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
