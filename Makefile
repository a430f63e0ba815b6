# Two entry points for a fresh machine:
#   make demo   create .venv, install the pinned environment, run the main job on the embedded benchmark
#   make test   create .venv, install the pinned environment, run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
SCALE ?= mini
STAMP := $(VENV)/.installed

.PHONY: demo test install slurm-deps bench clean-data

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

test: $(STAMP) slurm-deps
	$(BIN)/python -m pytest

# tests/slurm starts a one-node SLURM cluster on localhost, so the test machine needs slurm-wlm and munge
SLURM_BINARIES := sbatch slurmctld slurmd munged
slurm-deps:
	@missing=""; for b in $(SLURM_BINARIES); do command -v $$b >/dev/null 2>&1 || missing="$$missing $$b"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "slurm-deps: installing slurm-wlm and munge (missing:$$missing)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge; \
	else \
		echo "slurm-deps: missing$$missing. Install as root: apt-get install -y --no-install-recommends slurm-wlm munge"; \
		echo "slurm-deps: (Debian/Ubuntu; elsewhere the distribution's slurm and munge packages). Until then tests/slurm is skipped."; \
	fi

bench: $(STAMP)
	$(BIN)/python benchmarks/data_pipeline.py
	$(BIN)/python benchmarks/train_step.py

clean-data:
	rm -rf data/synth-smoke data/synth-mini
