# Two entry points: `make repro` runs the pipeline, `make test` runs the tests.
# Both create .venv with the pinned dependencies when it is missing or requirements.txt changed.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)

.PHONY: repro test
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
