# runner-platform — every task a developer or CI runs. The venv installs itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)
STACK ?= dev

.PHONY: setup plan check lint typecheck contracts test schema docs clean k8s-bins localenv-deps \
	bench bench-ingest bench-verifier bench-oidc bench-provision bench-faults bench-twin

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

# The shipping tests (wheel, image, release workflow) need these too: listed apart so the
# rule above stays as it is.
test: image-base actionlint

# The Helm chart tests (tests/integration/test_helm_charts.py) render the real charts.
test: helm

.PHONY: helm

helm: $(STAMP) ## helm v3 and the pinned Cilium, Karpenter, NVIDIA charts from Go modules (cached)
	@$(PY) -m localenv.helm prepare >/dev/null

.PHONY: image-deps image-base image dist actionlint

image-deps: ## Debian packages the image test uses (podman, buildah, runc, debootstrap)
	@missing=""; for tool in podman buildah runc debootstrap; do \
	  command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	  if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then \
	      apt-get install -y --no-install-recommends $$missing >/dev/null 2>&1 || \
	      { apt-get update >/dev/null && apt-get install -y --no-install-recommends $$missing; }; \
	    else echo "missing Debian packages:$$missing (sudo apt-get install$$missing)" >&2; exit 1; fi; \
	  fi

image-base: $(STAMP) image-deps ## Debian base images (debootstrap) and runtime wheels, cached
	@$(PY) -m localenv.image prepare >/dev/null

image: $(STAMP) image-base ## Build the controller image locally with podman, offline
	$(PY) -m localenv.image build

dist: $(STAMP) ## The sdist and the wheel, in dist/
	$(PY) -m build

actionlint: ## actionlint from its Go module (cached) and Debian shellcheck for run: scripts
	@command -v shellcheck >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get install -y --no-install-recommends shellcheck >/dev/null 2>&1 || \
	    { apt-get update >/dev/null && apt-get install -y --no-install-recommends shellcheck; }; \
	  else echo "missing Debian package: shellcheck (sudo apt-get install shellcheck)" >&2; exit 1; fi; }
	@bash localenv/build-actionlint.sh >/dev/null

check: lint typecheck contracts test ## Everything CI runs: lint, types, layers, tests

.PHONY: local

local: $(STAMP) localenv-deps k8s-bins ## The whole platform on this machine replaying a workload (docs/local.md); ARGS=--keep, --fault=…, --workload=FILE
	$(PY) -m localenv.local $(ARGS)

bench: bench-ingest bench-verifier bench-oidc bench-provision bench-faults bench-twin ## All benchmarks; figures in bench/results/*.json

bench-ingest: $(STAMP) localenv-deps ## Durable deliveries/s on one core, p50/p99 at 2,000/s
	$(PY) bench/ingest.py

bench-verifier: $(STAMP) localenv-deps ## Verifier cache-hit latency and API calls per 1,000 jobs
	$(PY) bench/verifier.py

bench-oidc: $(STAMP) ## GitHub OIDC validations/s with a warm JWKS cache, one core
	$(PY) bench/oidc.py

bench-provision: $(STAMP) localenv-deps k8s-bins ## Pod Provisioner on a real API server: burst, steady, clean-up, memory (~10 min)
	$(PY) bench/provision.py

bench-faults: $(STAMP) localenv-deps k8s-bins ## Recovery: Lease failover, Redis restart, dropped webhooks, fair-share convergence
	$(PY) bench/faults.py

bench-twin: $(STAMP) localenv-deps k8s-bins ## make local's scenarios compared: warm pool on/off, 1,000 jobs in 60 s (~8 min)
	$(PY) bench/twin.py

schema: $(STAMP) ## Regenerate the JSON Schema of the stack config
	$(PY) -m controller.schema json > docs/schema/platform-spec.schema.json

docs: schema ## Regenerate the configuration reference
	$(PY) -m controller.schema markdown > docs/configuration.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
