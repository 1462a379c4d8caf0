# transferops: `make run` runs the whole pipeline, `make test` the test suite. Both install first if needed.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install run repro test test-services test-slow test-all lint services bench bench-methods bench-targets bench-scale data-push data-pull lock clean clean-all

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=python3.11-or-newer)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/dvc config --local core.analytics false 2>/dev/null || true
	touch $(STAMP)

install: $(STAMP)

## run the whole pipeline on params.yaml through `dvc repro`, then print the summary
run: $(STAMP)
	$(BIN)/transferops run

## same, every stage forced (what the <= 3 min figure measures)
repro: $(STAMP)
	$(BIN)/transferops run --force

test: $(STAMP)
	$(BIN)/ruff check src tests components pipelines scripts
	$(BIN)/pytest -q

## tests against real server processes on loopback (MLflow server on sqlite and PostgreSQL, S3); also in `make test`
test-services: $(STAMP)
	$(BIN)/pytest -q -m services

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

test-all: $(STAMP)
	$(BIN)/pytest -q -m ""

lint: $(STAMP)
	$(BIN)/ruff check src tests components pipelines scripts
	$(BIN)/ruff format --check src tests components pipelines scripts

## the production set-up on this machine: PostgreSQL + S3 (moto) + an MLflow server, until Ctrl-C (data kept)
SERVICES_DIR ?= .services
services: $(STAMP)
	$(BIN)/python -m scripts.services --dir $(SERVICES_DIR) $(SERVICES_ARGS)

## benchmarks print figures; they assert nothing about speed
bench: $(STAMP)
	$(BIN)/transferops benchmark seeds --seeds 3

## every transfer method on the embedded default, 5 seeds -> reports/methods.{json,md}, label_efficiency.png
bench-methods: $(STAMP)
	$(BIN)/transferops benchmark methods --seeds 5

## the default pipeline on generated user-like targets (colour, inverted polarity, unseen font) -> reports/targets.*
bench-targets: $(STAMP)
	$(BIN)/transferops benchmark targets --seeds 3

## the scale bars (issue 9): Trainer vs bare step images/s, then ingest + one epoch on 40,000 generated 160-px JPEGs
bench-scale: $(STAMP)
	$(BIN)/transferops benchmark throughput --no-mlflow
	$(BIN)/transferops benchmark data --images 40000 --size 160

## version the data with DVC on the remote configured in .dvc/config (docs/mlflow-s3.md: credentials from the environment)
data-push: $(STAMP)
	$(BIN)/dvc push

data-pull: $(STAMP)
	$(BIN)/dvc pull

## re-resolve requirements.in into requirements.lock (needs the package index)
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install --quiet -r requirements.in
	{ echo "# Full lock of every package transferops installs (runtime + test), resolved together on Python 3.11."; \
	  echo "# Regenerate: make lock (installs requirements.in into a fresh venv and freezes it)."; \
	  .lockenv/bin/pip freeze --all --exclude-editable | grep -v "^pip=="; } > requirements.lock
	rm -rf .lockenv

clean:
	rm -rf artifacts mlflow.db mlruns reports/*.tmp

clean-all: clean
	rm -rf $(VENV)
