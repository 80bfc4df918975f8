# cryonb: two commands do everything on a fresh machine.
#   make reproduce   # creates .venv if missing, runs every notebook (PROFILE=quick|paper|smoke)
#   make test        # creates .venv if missing, runs the test suite
# On a CUDA machine choose the torch build, e.g.
#   make reproduce PROFILE=paper TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128"
# On a machine that caps each command (e.g. 10 minutes), run by parts: MAX_MINUTES=9 stops at the next
# saved state and exits 3 ("part done"); the same command continues. Repeat until it exits 0.

PYTHON      ?= python3
# OpenMP threads sleep when idle instead of spinning: set before torch loads (see cryonb/device.py); for
# notebooks opened in `make lab`, whose kernels may import torch before cryonb
export OMP_WAIT_POLICY ?= PASSIVE
VENV        ?= .venv
PROFILE     ?= quick
# torch goes in first and pinned: an unpinned torch pulled in by another package is a multi-GB CUDA build.
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
ONLY        ?=
MAX_MINUTES ?=
PYTEST_ARGS ?=

PY    := $(VENV)/bin/python
STAMP := $(VENV)/.cryonb-installed

.PHONY: venv reproduce test test-fast test-book book lab bench report clean help

help:
	@echo "make reproduce [PROFILE=quick|paper|smoke] [ONLY='03 04'] [MAX_MINUTES=9]   run the notebooks -> results/<profile>/"
	@echo "make test                                                   unit tests + smoke run of every notebook"
	@echo "make book [PROFILE=quick]                                   the course site from results/<profile>/ -> site/ (executes nothing)"
	@echo "make test-book [PROFILE=quick]                              make book, then every page in headless Chromium + screenshots"
	@echo "make lab                                                    JupyterLab on notebooks/ (.py files open as notebooks)"
	@echo "make bench                                                  benchmarks/*.py"
	@echo "make clean                                                  remove generated data, runs and smoke results"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(TORCH_INDEX)
	# the portal extra too, so the tests exercise the Portal client and OME-Zarr over HTTP (the core imports without it);
	# the book extra, so `make test` builds the course site and checks it in a browser
	$(PY) -m pip install --quiet -e '.[dev,portal,book]'
	# a kernelspec inside the venv, so papermill and JupyterLab run this venv's python
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ipykernel)" >/dev/null
	@touch $(STAMP)

reproduce: $(STAMP)
	$(PY) -m cryonb run --profile $(PROFILE) $(if $(ONLY),--only $(ONLY),) $(if $(MAX_MINUTES),--max-minutes $(MAX_MINUTES),)
	$(PY) -m cryonb report --profile $(PROFILE)

report: $(STAMP)
	$(PY) -m cryonb report --profile $(PROFILE)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not notebooks" $(PYTEST_ARGS)

test-book: $(STAMP)
	$(PY) -m cryonb book --profile $(PROFILE) --check

book: $(STAMP)
	$(PY) -m cryonb book --profile $(PROFILE)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	# SimpleCRF (reference of bench_crf) needs this flag with NumPy 2; the benchmark skips it if the build fails
	-CPPFLAGS="-DNPY_IN_ARRAY=NPY_ARRAY_IN_ARRAY" $(PY) -m pip install --quiet simplecrf==0.2.1.1
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf results/smoke runs data/generated data/cache site
