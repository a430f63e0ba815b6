# Two entry points for a fresh machine:
#   make demo   create .venv, install the pinned environment, run the main job on the embedded benchmark
#   make test   create .venv, install the pinned environment, run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
SCALE ?= mini
STAMP := $(VENV)/.installed

.PHONY: demo test install bench clean-data

install: $(STAMP)

$(STAMP): pyproject.toml requirements/lock.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "ssodlib needs Python >= 3.11 (set PYTHON=...)"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/lock.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	@touch $@

demo: $(STAMP)
	$(BIN)/ssod demo --scale $(SCALE) --out runs/demo-$(SCALE)

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/data_pipeline.py
	$(BIN)/python benchmarks/train_step.py

clean-data:
	rm -rf data/synth-smoke data/synth-mini
