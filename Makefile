# Two entry points: `make repro` runs the pipeline, `make test` runs the tests.
# Both create .venv with the pinned dependencies when it is missing or requirements.txt changed.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)

.PHONY: repro test gpu-check
# `make repro PROFILE=paper` first applies profiles/paper.yaml to params.yaml
repro: $(VENV)/.installed
ifdef PROFILE
	python profiles/apply.py $(PROFILE)
endif
	dvc repro

test: $(VENV)/.installed
	python -m pytest -q tests

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

# On a CUDA machine with bench/gpu-wheels.txt installed (bench/gpu_wheels.sh); at most 8 minutes.
# Not through .venv: the GPU machine's own python holds its CUDA torch. `make gpu-check DRY_RUN=1` does
# every step on CPU (the test suite runs it).
gpu-check:
	$(PYTHON) -m bench.gpu_check $(if $(DRY_RUN),--dry-run)
