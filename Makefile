# Two entry points: `make repro` runs the pipeline, `make test` runs the tests.
# Both create .venv with the pinned dependencies when it is missing or requirements.txt changed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)

.PHONY: repro repro-timed test gpu-check plan
# `make repro PROFILE=paper` runs the pipeline with profiles/paper.yaml's values as the DVC experiment `paper`:
# `dvc exp run --temp -n paper -S key=value ...` (profiles/overrides.py checks the profile first and prints the
# command). params.yaml is not written: the run is in a temporary copy of the workspace, and the workspace's
# params.yaml, dvc.lock and outputs stay as they are. `dvc exp show` lists the experiment; `dvc exp apply paper`
# brings its params and outputs into the workspace. EXP_RUN_FLAGS= (empty) runs it in the workspace instead,
# where a killed run resumes, and which then holds the profile's params and outputs (as after any `dvc exp run -S`).
EXP_RUN_FLAGS ?= --temp
repro: $(VENV)/.installed
ifdef PROFILE
	python profiles/overrides.py $(PROFILE) --run $(EXP_RUN_FLAGS)
else
	dvc repro
endif

# `make repro` with each line of DVC's output stamped with the seconds since the start (reports/repro.log),
# then where the time went by stage kind (bench/repro_times.py: reports/repro-times.json; after a later partial
# `dvc repro`, `python -m bench.repro_times reports/repro.log LATER.log --json ...` keeps each stage's latest run)
repro-timed: $(VENV)/.installed
	set -o pipefail; dvc repro 2>&1 | python -u -c 'import sys, time; t = time.time(); \
	[print(f"{time.time() - t:.1f} {line}", end="", flush=True) for line in sys.stdin]' | tee reports/repro.log
	python -m bench.repro_times reports/repro.log --json reports/repro-times.json

test: $(VENV)/.installed
	python -m pytest -q tests

# `make plan`: the size planner (plan/dvc.yaml; `make repro` leaves it out): every size trained at plan.fractions
# of its budget (the calibration runs), then the scaling-law fit and its prediction, reports/plan.md. With
# PROFILE=NAME, the profile's values as the DVC experiment NAME-plan (EXP_RUN_FLAGS as for `make repro`).
plan: $(VENV)/.installed
ifdef PROFILE
	eval "dvc exp run $(EXP_RUN_FLAGS) -n $(PROFILE)-plan plan/dvc.yaml $$(python profiles/overrides.py $(PROFILE))"
else
	dvc repro plan/dvc.yaml
endif

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

# On a CUDA machine with bench/gpu-wheels.txt installed (bench/gpu_wheels.sh); at most 8 minutes.
# Not through .venv: the GPU machine's own python holds its CUDA torch. `make gpu-check DRY_RUN=1` does
# every step on CPU (the test suite runs it).
gpu-check:
	$(PYTHON) -m bench.gpu_check $(if $(DRY_RUN),--dry-run)
