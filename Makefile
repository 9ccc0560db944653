# visionloop: `make demo` and `make test` are the two commands; both set up what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
PARAMS ?= params.yaml
# The venv lives outside the clone, keyed by the lock file's hash: clones share it, a lock change
# builds a new one. .venv is a link to it.
LOCK_HASH := $(shell sha256sum requirements.lock | cut -c1-12)
VENV_HOME ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/visionloop
VENV := $(VENV_HOME)/venv-$(LOCK_HASH)
PY := .venv/bin/python
# stage commands in dvc.yaml and prefect.yaml say `python`: the project's venv comes first on PATH
export PATH := $(CURDIR)/.venv/bin:$(PATH)
RUN := $(PY) -m tasks.env exec --

MLFLOW_PORT ?= 5000
PREFECT_PORT ?= 4200

.PHONY: help setup demo test test-all lint lock mlflow-ui prefect-ui repro rollback audit clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

setup:  ## create the pinned venv (once; later runs take seconds) and prepare offline settings
	@if [ ! -f "$(VENV)/.ready" ]; then \
	  set -e; \
	  $(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "visionloop needs Python 3.11, found " + sys.version' ; \
	  echo "setup: building $(VENV) from requirements.lock (first time only, several minutes)"; \
	  rm -rf "$(VENV)"; $(PYTHON) -m venv "$(VENV)"; \
	  "$(VENV)/bin/python" -m pip install --quiet --upgrade pip==26.3; \
	  "$(VENV)/bin/python" -m pip install --quiet --no-deps -r requirements.lock; \
	  "$(VENV)/bin/python" -m pip check; \
	  touch "$(VENV)/.ready"; \
	  find "$(VENV_HOME)" -maxdepth 1 -name 'venv-*' ! -path "$(VENV)" -mtime +7 -exec rm -rf {} + ; \
	fi
	@ln -sfn "$(VENV)" .venv
	@$(PY) -m tasks.env check

demo: setup  ## world → bootstrap champion → predict production batches (embedded stores, offline)
	$(RUN) $(PY) -m flows.demo --params $(PARAMS)

test: setup  ## the default test suite (≤ 15 min on 2 cores)
	$(RUN) $(PY) -m pytest -m "not slow" tests

test-all: setup  ## every test, slow ones included
	$(RUN) $(PY) -m pytest tests

lint: setup  ## ruff + mypy
	$(RUN) $(PY) -m ruff check tasks flows tests benchmarks
	$(RUN) $(PY) -m ruff format --check tasks flows tests benchmarks
	$(RUN) $(PY) -m mypy tasks

repro: setup  ## dvc repro (world, train, evaluate, export)
	$(RUN) dvc repro

rollback: setup  ## champion back to previous (or VERSION=n), after checking it loads and predicts
	$(RUN) $(PY) -m flows.rollback --params $(PARAMS) $(if $(VERSION),--to $(VERSION))

audit: setup  ## print the audit trail of alias moves
	$(RUN) $(PY) -m tasks.promote --params $(PARAMS) --audit

lock:  ## re-resolve requirements.in into requirements.lock
	rm -rf /tmp/visionloop-lock && $(PYTHON) -m venv /tmp/visionloop-lock
	/tmp/visionloop-lock/bin/python -m pip install --quiet --upgrade pip==26.3
	/tmp/visionloop-lock/bin/python -m pip install --quiet -r requirements.in
	/tmp/visionloop-lock/bin/python -m pip freeze --all | grep -v '^pip==' > requirements.lock

mlflow-ui: setup  ## MLflow UI on http://127.0.0.1:$(MLFLOW_PORT) over the project's store
	$(RUN) .venv/bin/mlflow ui --host 127.0.0.1 --port $(MLFLOW_PORT) \
	  --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} --default-artifact-root ./mlartifacts

prefect-ui: setup  ## Prefect server + UI on http://127.0.0.1:$(PREFECT_PORT) over the project's PREFECT_HOME
	$(RUN) .venv/bin/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

clean:  ## remove generated data, models, reports and local stores (keeps the venv)
	rm -rf data/world data/predictions models/train models/export reports mlflow.db mlartifacts .cache/prefect dvc-remote
