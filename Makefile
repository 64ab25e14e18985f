# The two commands of README.md: `make run` (train the default experiment) and `make test`.
# Each one sets up what it needs first: a venv from requirements.txt and, where apt exists,
# Debian's Fashion-MNIST package.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
WORKDIR ?= runs/default

.PHONY: run test setup data slurm
run: setup
	$(PY) main.py --config=configs/default.py --workdir=$(WORKDIR)

test: setup
	$(PY) -m pytest -q tests

setup: $(VENV)/.installed data

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

data:
	@if [ ! -f $(FMNIST) ] && command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	fi

# SLURM client and daemons for tests/test_slurm.py, which starts its own one-node cluster
# (scripts/slurm_local.sh). Not part of `setup`: it installs system daemons, so a laptop
# opts in; .ci/run always does, and there the SLURM test fails instead of skipping.
slurm:
	@if ! command -v sbatch >/dev/null && command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq slurm-wlm munge; \
	fi
