# minicpm-recipes. `make install` then `make test` on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# llamafactory 0.9.5 imports torchaudio at import time: on a CPU machine install this matching trio from PyPI.
TORCH_PINS ?= torch==2.11.0 torchaudio==2.11.0 torchvision==0.26.0
PYTEST_ARGS ?=

.PHONY: install test test-fast lint bench clean help

help:
	@echo "make install    create $(VENV) and install minicpm-recipes[train,dev] (torch CPU-capable, LLaMA-Factory 0.9.5, DeepSpeed)"
	@echo "make test       run the whole test suite (slow end-to-end training tests included)"
	@echo "make test-fast  unit tests only"
	@echo "make lint       ruff"
	@echo "make bench      benchmarks in bench/"
	@echo "make {sft,dpo,kto,pretrain}-{lora,full} [MODEL=... DIST=... NODES=... DATASET=...]"
	@echo "                render, check and train one recipe (no MODEL: tiny model + demo data on CPU); make train-help"
	@echo "make tiny-model build the tiny local model (.cache/models/tiny)"
	@echo "make demo       the whole pipeline on CPU: validate, register, train sft/dpo/kto/pt, merge, chat"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip wheel

install: $(PY)
	$(PIP) install $(TORCH_PINS)
	DS_BUILD_OPS=0 $(PIP) install -e '.[train,dev]' $(TORCH_PINS)
	$(PY) -c "import llamafactory, deepspeed, accelerate, minicpm_recipes; print('installed: llamafactory', llamafactory.__version__, '/ deepspeed', deepspeed.__version__)"

test:
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast:
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint:
	$(PY) -m ruff check minicpm_recipes tests bench

bench:
	$(PY) -m bench

clean:
	rm -rf build dist *.egg-info .pytest_cache configs

-include mk/*.mk
