# visionloop: `make demo` and `make test` are the two commands; both set up what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
PARAMS ?= params.yaml
DEMO_FLOW ?= flows.demo
# PARAMS may name several files: the base first, then overlays layered over it (later wins), e.g.
# `make demo PARAMS="params.yaml site.yaml"`; every command gets one --params per file.
PARAMS_ARGS := $(foreach p,$(PARAMS),--params $(p))
# The venv lives outside the clone, keyed by the lock file's hash: clones share it, a lock change
# builds a new one. .venv is a link to it.
LOCK_HASH := $(shell sha256sum requirements.lock | cut -c1-12)
VENV_HOME ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/visionloop
VENV := $(VENV_HOME)/venv-$(LOCK_HASH)
PY := .venv/bin/python
# stage commands in dvc.yaml and prefect.yaml say `python`: the project's venv comes first on PATH
export PATH := $(CURDIR)/.venv/bin:$(PATH)
RUN := $(PY) -m tasks.env exec --

# The server stack (deploy/local/stack.py): PostgreSQL, S3 (moto; STACK_S3=s3rver persists), MLflow, Prefect server +
# worker on 127.0.0.1, data in STACK_DIR. STACK=server on any target runs it against the stack: the stack's env file
# is applied (python -m deploy.local.stack exec) and params.server.yaml is layered over PARAMS.
STACK ?=
STACK_DIR ?= $(CURDIR)/.cache/stack
STACK_S3 ?= moto
STACK_PG_PORT ?= 25432
STACK_S3_PORT ?= 29000
STACK_MLFLOW_PORT ?= 25000
STACK_PREFECT_PORT ?= 24200
export STACK_DIR STACK_S3 STACK_PG_PORT STACK_S3_PORT STACK_MLFLOW_PORT STACK_PREFECT_PORT
ifeq ($(STACK),server)
PARAMS_ARGS += --params params.server.yaml
RUN := $(PY) -m deploy.local.stack exec -- $(RUN)
else ifneq ($(STACK),)
$(error STACK=$(STACK): say STACK=server (the stack of make stack-up) or leave it unset (embedded stores))
endif

# pytest-xdist workers of `make test`: the suite waits on servers and subprocesses much of the time, so two workers on
# two cores take ~16 min where one took ~26 (AVX2 host); a file's tests stay on one worker (module fixtures built once)
TEST_WORKERS ?= 2

MLFLOW_PORT ?= 5000
PREFECT_PORT ?= 4200

# Label Studio server: its own venv (~1 GB) keyed by its own lock like the main one, with a migrated empty
# database beside it, so a fresh data dir starts in seconds instead of minutes.
LS_LOCK_HASH := $(shell sha256sum requirements-labelstudio.lock | cut -c1-12)
LS_VENV := $(VENV_HOME)/labelstudio-$(LS_LOCK_HASH)
LABEL_STUDIO_PORT ?= 8080
LABEL_STUDIO_DATA ?= $(CURDIR)/.cache/labelstudio
LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT ?= $(CURDIR)
LABEL_STUDIO_START_TIMEOUT ?= 180
# Label Studio's SSRF protection (SSRF_PROTECTION_ENABLED, on by default) refuses an S3 storage endpoint on a local or
# private address, e.g. moto on 127.0.0.1. Off only for this local server (it binds 127.0.0.1); a deployment keeps it on.
LABEL_STUDIO_SSRF_PROTECTION ?= false
# Local dev credentials of the embedded demo server only, seeded on the first start of a fresh data dir.
# Never a real server's: set LABEL_STUDIO_API_KEY in the environment for those (see .env.example).
LABEL_STUDIO_USERNAME ?= admin@visionloop.local
LABEL_STUDIO_PASSWORD ?= visionloop-local
LABEL_STUDIO_API_KEY := $(or $(LABEL_STUDIO_API_KEY),visionloop-local-dev-token)
export LABEL_STUDIO_API_KEY

.PHONY: help setup demo demo-commercial test test-all test-reliability test-slow-reliability test-slow-soak test-slow-bench soak lint lock mlflow-ui prefect-ui deploy deploy-down repro restore retrain gc forget rollback audit doctor monitor metrics clean

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

demo: setup labelstudio  ## the whole loop: world → champion → predict → label (Label Studio) → retrain → gate → promote
	@started=0; \
	if ! curl -sf -o /dev/null "http://127.0.0.1:$(LABEL_STUDIO_PORT)/health"; then \
	  $(MAKE) --no-print-directory labelstudio-up || exit 1; started=1; fi; \
	failure=.cache/demo-failure.txt; rm -f $$failure; \
	$(RUN) $(PY) -m $(DEMO_FLOW) $(PARAMS_ARGS) --failure-file $$failure; rc=$$?; \
	if [ $$started = 1 ]; then $(MAKE) --no-print-directory labelstudio-down; fi; \
	if [ $$rc != 0 ]; then echo "make demo: FAILED (exit $$rc): $$(cat $$failure 2>/dev/null || echo 'see the error above')" >&2; fi; \
	exit $$rc

demo-commercial:  ## the loop under a proprietary product's license policy: RF-DETR champion, a YOLO candidate refused (longer: see README Licenses)
	@$(MAKE) --no-print-directory demo DEMO_FLOW=flows.demo_commercial PARAMS="params.yaml params.commercial.yaml"

test: setup  ## the default test suite (≤ 15 min on 2 cores: TEST_WORKERS pytest workers, one test file each at a time)
	$(RUN) $(PY) -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile tests

test-all: setup  ## every test, slow ones included
	$(RUN) $(PY) -m pytest tests

test-reliability: setup  ## the reliability and security suite, slow parts included (tests/reliability)
	$(RUN) $(PY) -m pytest tests/reliability

test-slow-reliability: setup labelstudio  ## the slow part of tests/reliability but the soak (killed stages, races, seeded kills, clones), the loop decisions, the RF-DETR smoke test, the license record on MLflow, dvc repro end to end: what CI adds to `make test`
	$(RUN) $(PY) -m pytest -m slow -n $(TEST_WORKERS) --dist loadfile tests/reliability \
	  --deselect tests/reliability/test_soak.py::test_soak tests/integration/test_loop_decisions.py \
	  tests/integration/test_rfdetr_smoke.py tests/integration/test_license_record.py tests/integration/test_dvc_repro.py \
	  tests/integration/test_continuous_learning.py tests/integration/test_labelstudio_race.py \
	  tests/integration/test_monitor_flow.py

test-slow-soak: setup labelstudio  ## the 30-cycle soak (tests/reliability/test_soak.py; VISIONLOOP_SOAK_CYCLES=n for fewer): what CI adds to `make test`
	$(RUN) $(PY) -m pytest -m slow tests/reliability/test_soak.py

test-slow-bench: setup labelstudio  ## the --quick runs of the loop's own benchmarks (label efficiency, cycle time, predict end to end), the sparse-validation training test, the compress stage's MACs search and its inference-benchmark rows: what CI adds so they cannot rot (~15 min)
	$(RUN) $(PY) -m pytest -m slow tests/integration/test_bench_loop.py tests/integration/test_bench_cycle.py \
	  tests/integration/test_bench_predict.py tests/integration/test_train_validation.py \
	  tests/integration/test_compress.py

soak: setup labelstudio  ## CYCLES=n small loop cycles in a row (default 30, ~40 s each): fds, threads, RSS, stores -> reports/benchmarks/soak.json
	$(RUN) $(PY) benchmarks/soak.py $(if $(CYCLES),--cycles $(CYCLES))

lint: setup  ## ruff + mypy
	$(RUN) $(PY) -m ruff check tasks flows tests benchmarks deploy
	$(RUN) $(PY) -m ruff format --check tasks flows tests benchmarks deploy
	$(RUN) $(PY) -m mypy tasks flows benchmarks deploy

repro: setup  ## dvc repro (params, world, merge, train, evaluate, export); overlays: PARAMS="params.yaml site.yaml"
	mkdir -p data/labels models/parent  # deps of merge and train: empty before the first loop cycle
	@if [ "$(strip $(PARAMS))" != "params.yaml" ]; then \
	  echo "+ layering $(PARAMS) into params.effective.yaml (recorded as the params stage)"; \
	  $(RUN) $(PY) -m tasks.adapters.dvc $(PARAMS_ARGS) || exit 1; fi
	$(RUN) dvc repro

restore: setup  ## VERSION=n: that version's data, checkpoint and export folder back from the DVC remote, hashes checked
	@test -n "$(VERSION)" || { echo "make restore: say which version, e.g. make restore VERSION=1"; exit 2; }
	$(RUN) $(PY) -m tasks.registry $(PARAMS_ARGS) --restore $(VERSION)

retrain: setup  ## VERSION=n: restore it, then train/evaluate/export on its data with this checkout's code
	@test -n "$(VERSION)" || { echo "make retrain: say which version, e.g. make retrain VERSION=1"; exit 2; }
	$(RUN) $(PY) -m flows.restore $(PARAMS_ARGS) --version $(VERSION) --retrain

gc: setup  ## DVC cache and remote: keep what registered versions and the workspace use, remove the rest (DRY=1: count)
	$(RUN) $(PY) -m tasks.registry $(PARAMS_ARGS) --gc $(if $(DRY),--dry)

forget: setup  ## IMAGE=<sha256 or id>: remove one image from every store (log, Label Studio, labels, merged, DVC, MLflow), audited
	@test -n "$(IMAGE)" || { echo "make forget: say which image, e.g. make forget IMAGE=2026-11-02_0003 (or its sha256)"; exit 2; }
	$(RUN) $(PY) -m tasks.forget $(PARAMS_ARGS) --image "$(IMAGE)"

rollback: setup  ## champion back to previous (or VERSION=n), after checking it loads and predicts
	$(RUN) $(PY) -m flows.rollback $(PARAMS_ARGS) $(if $(VERSION),--to $(VERSION))

audit: setup  ## print the audit trail of alias moves
	$(RUN) $(PY) -m tasks.promote $(PARAMS_ARGS) --audit

doctor: setup  ## are the stores consistent (ledger ↔ Label Studio, manifest ↔ shards, registry ↔ audit, log)? exit 1 if not
	$(RUN) $(PY) -m tasks.doctor $(PARAMS_ARGS)

monitor: setup  ## drift windows vs the champion's baseline -> reports/monitor.json (START=deployment|subflow|none, default none)
	$(RUN) $(PY) -m flows.monitor $(PARAMS_ARGS) --start $(or $(START),none)

metrics: setup  ## serve the monitor's Prometheus textfile on http://127.0.0.1:9108/metrics (monitor.metrics.port; Ctrl-C stops)
	$(RUN) $(PY) -m tasks.monitor $(PARAMS_ARGS) --serve

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

.PHONY: stack-up stack-down stack-status test-stack test-slow-stack chromium migrate-to-stack

stack-up: setup  ## server stack on 127.0.0.1: PostgreSQL 15 (apt-get installs it if missing), S3, MLflow, Prefect + worker
	$(PY) -m deploy.local.stack up

stack-down:  ## stop what stack-up started (idempotent; data stays in STACK_DIR)
	@if [ -x $(PY) ]; then $(PY) -m deploy.local.stack down; else echo "stack-down: no venv, nothing to stop"; fi

stack-status:  ## each service of the server stack: up or down, address, log
	$(PY) -m deploy.local.stack status

test-stack: setup  ## the server stack's tests: a real stack up on free ports (~1.5 min, slow) + the deploy consistency checks
	$(RUN) $(PY) -m pytest tests/stack

migrate-to-stack: setup  ## move this project's MLflow store (ids kept), artifacts, DVC remote, prediction log and production batches onto a fresh make stack-up, then check -> reports/migration.json
	@url=$$($(PY) -c 'from deploy.local.stack import Stack; print(Stack.from_env().database_url("mlflow"))') || exit 1; \
	remote="$(VENV_HOME)/dvc-remote"; \
	VISIONLOOP_MLFLOW_DB_URL="$$url" $(PY) -m deploy.local.stack exec -- $(RUN) $(PY) -m tasks.adapters.migration \
	  --source sqlite:///mlflow.db --artifact-root mlartifacts --artifacts-destination s3://visionloop-mlflow/mlartifacts \
	  $$( [ -d "$$remote" ] && echo --dvc-remote "$$remote" --dvc-remote-destination s3://visionloop-dvc/remote ) \
	  $(PARAMS_ARGS) --params params.server.yaml --out reports/migration.json

chromium:  ## the Debian Chromium the browser test drives (apt-get when root; Playwright downloads nothing)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && echo "chromium: installing the Debian package" && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  { echo "chromium: missing; install the Debian package chromium (apt-get install chromium)" >&2; exit 1; }

test-slow-stack: setup chromium labelstudio  ## what CI adds for the server stack: the real stack + migration + its UIs in Chromium (tests/stack), the browser test, the Dask fan-out, S3 at scale (production, log), the quick runs of the stack's benchmarks (~12 min)
	$(RUN) $(PY) -m pytest -m slow tests/stack tests/browser tests/integration/test_fanout.py \
	  tests/integration/test_s3_adapter.py tests/integration/test_s3_production.py tests/integration/test_s3_log.py \
	  tests/integration/test_s3_log_stages.py tests/integration/test_bench_dvc_scale.py \
	  tests/integration/test_bench_prefect_backends.py tests/integration/test_bench_scale.py \
	  tests/integration/test_labelstudio_s3.py

.PHONY: labelstudio labelstudio-up labelstudio-down

labelstudio:  ## install the Label Studio server into its own venv (once, a few minutes; later runs take seconds)
	@if [ ! -f "$(LS_VENV)/.ready" ]; then \
	  set -e; \
	  $(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Label Studio here needs Python 3.11, found " + sys.version' ; \
	  echo "labelstudio: building $(LS_VENV) from requirements-labelstudio.lock (first time only, a few minutes)"; \
	  rm -rf "$(LS_VENV)"; $(PYTHON) -m venv "$(LS_VENV)"; \
	  "$(LS_VENV)/bin/python" -m pip install --quiet --upgrade pip==26.3; \
	  "$(LS_VENV)/bin/python" -m pip install --quiet --no-deps -r requirements-labelstudio.lock; \
	  "$(LS_VENV)/bin/python" -m pip check; \
	  echo "labelstudio: migrating an empty database to copy into fresh data dirs (first time only, about a minute)"; \
	  mkdir -p "$(LS_VENV)/template"; \
	  set -a; source visionloop.env; set +a; \
	  LABEL_STUDIO_BASE_DATA_DIR="$(LS_VENV)/template" "$(LS_VENV)/bin/label-studio" version > "$(LS_VENV)/template/migrate.log" 2>&1; \
	  test -f "$(LS_VENV)/template/label_studio.sqlite3"; \
	  touch "$(LS_VENV)/.ready"; \
	  find "$(VENV_HOME)" -maxdepth 1 -name 'labelstudio-*' ! -path "$(LS_VENV)" -mtime +7 -exec rm -rf {} + ; \
	fi

labelstudio-up: labelstudio  ## start Label Studio on http://127.0.0.1:$(LABEL_STUDIO_PORT) (token LABEL_STUDIO_API_KEY), wait until healthy
	@set -e; data="$(LABEL_STUDIO_DATA)"; pidfile="$$data/server.pid"; log="$$data/server.log"; \
	url="http://127.0.0.1:$(LABEL_STUDIO_PORT)"; \
	if [ -f "$$pidfile" ] && ps -ww -o args= -p "$$(cat "$$pidfile")" 2>/dev/null | grep -q "label-studio start"; then \
	  echo "labelstudio-up: already running (pid $$(cat "$$pidfile"), data $$data)"; exit 0; fi; \
	if ! "$(LS_VENV)/bin/python" -c 'import socket, sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' $(LABEL_STUDIO_PORT) 2>/dev/null; then \
	  echo "labelstudio-up: port $(LABEL_STUDIO_PORT) on 127.0.0.1 is taken (Label Studio would silently move to another);" \
	    "free it or run make labelstudio-up LABEL_STUDIO_PORT=<port> and export LABEL_STUDIO_URL=http://127.0.0.1:<port>" >&2; \
	  exit 1; fi; \
	mkdir -p "$$data"; \
	[ -f "$$data/label_studio.sqlite3" ] || cp "$(LS_VENV)/template/label_studio.sqlite3" "$$data/"; \
	set -a; source visionloop.env; set +a; \
	LABEL_STUDIO_BASE_DATA_DIR="$$data" \
	LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true \
	LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT="$(LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)" \
	LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true \
	SSRF_PROTECTION_ENABLED="$(LABEL_STUDIO_SSRF_PROTECTION)" \
	LABEL_STUDIO_USERNAME="$(LABEL_STUDIO_USERNAME)" LABEL_STUDIO_PASSWORD="$(LABEL_STUDIO_PASSWORD)" \
	LABEL_STUDIO_USER_TOKEN="$$LABEL_STUDIO_API_KEY" \
	  nohup "$(LS_VENV)/bin/label-studio" start --no-browser --internal-host 127.0.0.1 --port $(LABEL_STUDIO_PORT) \
	  --data-dir "$$data" --enable-legacy-api-token < /dev/null > "$$log" 2>&1 & \
	pid=$$!; echo $$pid > "$$pidfile"; \
	echo "labelstudio-up: starting Label Studio (pid $$pid, data $$data, log $$log)"; \
	for i in $$(seq 1 $(LABEL_STUDIO_START_TIMEOUT)); do \
	  if ! kill -0 $$pid 2>/dev/null; then \
	    echo "labelstudio-up: the server exited; end of $$log:" >&2; tail -n 20 "$$log" >&2; rm -f "$$pidfile"; exit 1; fi; \
	  if grep -q "Starting development server at" "$$log"; then \
	    if ! grep -q "Starting development server at $$url/" "$$log"; then \
	      echo "labelstudio-up: port $(LABEL_STUDIO_PORT) was taken meanwhile and the server moved; stopping it" >&2; \
	      kill $$pid; rm -f "$$pidfile"; exit 1; fi; \
	    if curl -sf -o /dev/null "$$url/health"; then break; fi; \
	  fi; \
	  sleep 1; \
	done; \
	if ! curl -sf -o /dev/null "$$url/health"; then \
	  echo "labelstudio-up: not healthy after $(LABEL_STUDIO_START_TIMEOUT) s (still starting? see $$log)" >&2; exit 1; fi; \
	code=$$(printf 'Authorization: Token %s\n' "$$LABEL_STUDIO_API_KEY" | \
	  curl -s -o /dev/null -w '%{http_code}' -H @- "$$url/api/projects?page_size=1"); \
	if [ "$$code" != 200 ]; then \
	  echo "labelstudio-up: up at $$url but it refuses LABEL_STUDIO_API_KEY (HTTP $$code): $$data was first started with" \
	    "another token. Use that token, or make labelstudio-down && rm -rf $$data" >&2; exit 1; fi; \
	echo "labelstudio-up: ready at $$url (user $(LABEL_STUDIO_USERNAME); stop with make labelstudio-down)"

labelstudio-down:  ## stop the Label Studio server that labelstudio-up started
	@pidfile="$(LABEL_STUDIO_DATA)/server.pid"; \
	if [ ! -f "$$pidfile" ]; then echo "labelstudio-down: not running (no $$pidfile)"; exit 0; fi; \
	pid=$$(cat "$$pidfile"); \
	if ps -ww -o args= -p "$$pid" 2>/dev/null | grep -q "label-studio start"; then \
	  kill "$$pid"; \
	  for i in $$(seq 1 30); do kill -0 "$$pid" 2>/dev/null || break; sleep 1; done; \
	  if kill -0 "$$pid" 2>/dev/null; then kill -9 "$$pid"; fi; \
	  echo "labelstudio-down: stopped pid $$pid"; \
	else echo "labelstudio-down: pid $$pid is not a running Label Studio (stale pid file removed)"; fi; \
	rm -f "$$pidfile"

PREFECT_URL := http://127.0.0.1:$(PREFECT_PORT)
PREFECT_RUN := .cache/prefect/run

deploy: setup  ## Prefect server on 127.0.0.1 + work pool + every prefect.yaml deployment + a process worker
	@set -e; mkdir -p $(PREFECT_RUN); \
	export PREFECT_API_URL=$(PREFECT_URL)/api VISIONLOOP_HOME=$(CURDIR); \
	if ! curl -sf -o /dev/null $(PREFECT_URL)/api/health; then \
	  echo "deploy: starting the Prefect server (log $(PREFECT_RUN)/server.log)"; \
	  nohup $(RUN) .venv/bin/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT) \
	    < /dev/null > $(PREFECT_RUN)/server.log 2>&1 & echo $$! > $(PREFECT_RUN)/server.pid; \
	  for i in $$(seq 1 120); do curl -sf -o /dev/null $(PREFECT_URL)/api/health && break; sleep 1; done; \
	fi; \
	curl -sf -o /dev/null $(PREFECT_URL)/api/health || { echo "deploy: no healthy server, see $(PREFECT_RUN)/server.log" >&2; exit 1; }; \
	$(RUN) .venv/bin/prefect work-pool inspect visionloop-local > /dev/null 2>&1 \
	  || $(RUN) .venv/bin/prefect work-pool create visionloop-local --type process; \
	$(RUN) .venv/bin/prefect --no-prompt deploy --all; \
	if [ -f $(PREFECT_RUN)/worker.pid ] && kill -0 "$$(cat $(PREFECT_RUN)/worker.pid)" 2>/dev/null; then \
	  echo "deploy: worker already running (pid $$(cat $(PREFECT_RUN)/worker.pid))"; \
	else \
	  nohup $(RUN) .venv/bin/prefect worker start --pool visionloop-local \
	    < /dev/null > $(PREFECT_RUN)/worker.log 2>&1 & echo $$! > $(PREFECT_RUN)/worker.pid; \
	  echo "deploy: process worker started (pid $$(cat $(PREFECT_RUN)/worker.pid), log $(PREFECT_RUN)/worker.log)"; \
	fi; \
	echo "deploy: deployments registered; UI $(PREFECT_URL); run one: PREFECT_API_URL=$(PREFECT_URL)/api" \
	  ".venv/bin/prefect deployment run 'continuous_learning/retrain'; stop: make deploy-down"

deploy-down:  ## stop the worker and the Prefect server that make deploy started
	@for name in worker server; do f=$(PREFECT_RUN)/$$name.pid; \
	  if [ -f $$f ] && kill -0 "$$(cat $$f)" 2>/dev/null; then \
	    pid=$$(cat $$f); pkill -TERM -P $$pid 2>/dev/null || true; kill $$pid 2>/dev/null || true; \
	    for i in $$(seq 1 15); do kill -0 $$pid 2>/dev/null || break; sleep 1; done; \
	    kill -0 $$pid 2>/dev/null && { pkill -KILL -P $$pid 2>/dev/null; kill -9 $$pid 2>/dev/null; } || true; \
	    echo "deploy-down: stopped $$name (pid $$pid)"; \
	  else echo "deploy-down: $$name not running"; fi; rm -f $$f; done

clean:  ## remove generated data, models, reports and local stores (keeps the venv)
	rm -rf data/world data/predictions data/samples data/labels data/quarantine data/holdouts data/merged data/audit \
	  models/train models/export models/champion models/parent reports mlflow.db mlartifacts .cache/prefect \
	  dvc.lock params.effective.yaml
