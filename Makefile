# The verbs a person types. `make test` and `make local` work on a fresh machine: they create
# the Python environment (.venv) and the pinned CDK CLI (node_modules) themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CDK := npx --no-install cdk
STAGE ?= default
# CPU build of torch for tests and local mode; images pin their own versions.
TORCH_VERSION ?= 2.13.0
PYTEST_WORKERS ?= auto

export CDK_DISABLE_CLI_TELEMETRY := true
export CDK_DISABLE_VERSION_CHECK := true
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1
export JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

PACKAGES := $(wildcard containers/*/pyproject.toml)
# The images' lock files constrain the test environment (scripts/lock_constraints.py), so
# `make test` runs the library versions the images ship, whatever is released upstream.
LOCKS := $(wildcard containers/*/requirements.lock)

.PHONY: help venv node test lint synth deploy destroy diff local clean images-local bench \
	preflight leftovers admin-password upload-model reliability

help:
	@echo "make local     run all of Easel on this machine (no AWS account needed)"
	@echo "make test      run the whole test suite"
	@echo "make synth     synthesize the CloudFormation template (no AWS credentials needed)"
	@echo "make deploy    deploy to the AWS account in your environment (STAGE=$(STAGE))"
	@echo "make destroy   remove the deployment and everything the portal created"
	@echo "make preflight check the AWS account before the first deploy"
	@echo "make leftovers list what this deployment left in the account (and its cost)"
	@echo "make admin-password           print the portal's admin password"
	@echo "make upload-model MODEL=path  upload a checkpoint, diffusers folder or A1111 models folder"
	@echo "make images-local [IMAGES=..] build the images with a local Docker instead of CodeBuild"
	@echo "make reliability [CLIENTS=50] [LOAD_SECONDS=60] local mode under load, faults and fuzzing (<= 15 min)"

$(VENV)/.ready: pyproject.toml $(PACKAGES) $(LOCKS) scripts/lock_constraints.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=25.1"
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PY) scripts/lock_constraints.py > $(VENV)/constraints.txt
	$(PIP) install -q -e . $(foreach p,$(PACKAGES),-e $(dir $(p))) --group dev \
		-c $(VENV)/constraints.txt
	# The CLIP BPE vocabulary ships in open_clip_torch; --no-deps keeps torchvision/timm out.
	$(PIP) install -q --no-deps open_clip_torch==3.3.0
	# ESRGAN upscalers (the inference image's `upscalers` extra): --no-deps, because PyPI's
	# torchvision is built for CUDA torch and cannot import beside the CPU build.
	$(PIP) install -q --no-deps spandrel==0.4.2 einops==0.8.2
	touch $@

venv: $(VENV)/.ready

node_modules/.ready: package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

node: node_modules/.ready

test: venv node
	$(PY) -m ruff check .
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup

lint: venv
	$(PY) -m ruff check .

synth: venv node
	$(CDK) synth -c stage=$(STAGE) --quiet

diff: venv node
	$(CDK) diff -c stage=$(STAGE)

deploy: venv node
	$(CDK) deploy -c stage=$(STAGE) --require-approval broadening

destroy: venv node
	$(CDK) destroy -c stage=$(STAGE)

# make local [MODEL=path] [CLEAN=1] [PORT=8000]: all of Easel on this machine; Ctrl-C stops it.
local: venv
	$(PY) -m local.studio --stage $(STAGE) $(if $(MODEL),--model "$(MODEL)") \
		$(if $(CLEAN),--clean) $(if $(PORT),--port $(PORT))

preflight: venv
	$(PY) -m scripts.preflight --stage $(STAGE)

leftovers: venv
	$(PY) -m scripts.leftovers --stage $(STAGE)

admin-password: venv
	@$(PY) -m scripts.admin_password get --stage $(STAGE)

upload-model: venv
	@test -n "$(MODEL)" || { echo "usage: make upload-model MODEL=path [NAME=name]"; exit 2; }
	$(PY) -m scripts.upload_model "$(MODEL)" $(if $(NAME),--name $(NAME)) --stage $(STAGE)

images-local: venv
	scripts/images_local.sh $(IMAGES)

clean:
	rm -rf cdk.out .pytest_cache

# make reliability [CLIENTS=50] [LOAD_SECONDS=60] [FUZZ=150]: `make local` (CPU, tiny demo model, loopback
# only) under N concurrent A1111 clients, a killed inference server, a SIGKILLed studio and
# schema fuzzing; prints one table. `timeout` bounds the whole run to 15 minutes.
CLIENTS ?= 50
LOAD_SECONDS ?= 60
FUZZ ?= 150
reliability: venv
	timeout --kill-after=30 900 $(PY) bench/reliability.py --clients $(CLIENTS) \
		--seconds $(LOAD_SECONDS) --fuzz $(FUZZ) --out bench/results/reliability.json
