# The two commands of README.md: `make run` (train the default experiment) and `make test`.
# Each one sets up what it needs first: a venv from requirements.txt and, where apt exists,
# Debian's Fashion-MNIST package, tcmalloc (kernels/runtime.py preloads it) and the oneDNN kernels.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
WORKDIR ?= runs/default
# $(call apt_install,TEST,PACKAGES): install Debian PACKAGES unless the shell TEST passes or
# there is no apt-get (then the feature that needs them falls back or skips).
apt_install = @if ! { $(1); } >/dev/null 2>&1 && command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(2); \
	fi

.PHONY: run test setup data tcmalloc slurm kernels chromium
run: setup
	$(PY) main.py --config=configs/default.py --workdir=$(WORKDIR)

# Two pytest workers, a file each at a time (module fixtures stay in one worker): the tests are
# mostly XLA compiles, which run on one thread, so two overlap on two cores (405 tests in 25m10s from a
# clean clone on a 2-core AVX-512 EPYC that ran 377 in 20m43s; serially, 268 tests took 13m45s-15m38s).
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

setup: $(VENV)/.installed data tcmalloc kernels

# oneDNN convolutions for the CPU backend (kernels/onednn.py): Debian's libdnnl-dev and g++,
# against the XLA FFI headers that ship with jaxlib. Without them, runs use XLA's convolutions.
KERNEL_LIB := kernels/build/libonednn_conv.so
kernels: $(KERNEL_LIB)

$(KERNEL_LIB): kernels/onednn_conv.cc $(VENV)/.installed
	$(call apt_install,[ -f /usr/include/oneapi/dnnl/dnnl.hpp ],libdnnl-dev g++)
	mkdir -p $(dir $@)
	g++ -O2 -std=c++17 -shared -fPIC -w -I"$$($(PY) -c 'import jax; print(jax.ffi.include_dir())')" \
	  $< -ldnnl -o $@.tmp && mv $@.tmp $@

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

data:
	$(call apt_install,[ -f $(FMNIST) ],dataset-fashion-mnist)

# main.py re-executes itself with tcmalloc preloaded when it is installed (kernels/runtime.py).
tcmalloc:
	$(call apt_install,ls /usr/lib/*/libtcmalloc_minimal.so.4,libtcmalloc-minimal4)

# SLURM client and daemons for tests/test_slurm.py, which starts its own one-node cluster
# (scripts/slurm_local.sh). Not part of `setup`: it installs system daemons, so a laptop
# opts in; .ci/run always does, and there the SLURM test fails instead of skipping.
slurm:
	$(call apt_install,command -v sbatch,slurm-wlm munge)

# Headless Chromium for tests/test_report.py, which renders W/report.html and checks every
# section and figure. Opt-in like slurm (a browser is a large install); .ci/run always does.
chromium:
	$(call apt_install,command -v chromium,chromium)
