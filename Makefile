# Two commands on a fresh machine:  make demo  |  make test
# torch is pinned and installed first so pip never swaps in another build: on a machine with a local CPU wheel
# of torch 2.13.0 that wheel is used; elsewhere pip serves the (CUDA) build of the same version.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  := torch==2.13.0

.PHONY: demo test install install-dev lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(VENV)/bin/alignkit demo --out runs/demo

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q -p no:cacheprovider tests

bench: $(VENV)/.installed
	$(PY) bench/vs_trl.py

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check alignkit tests bench

clean:
	rm -rf runs .pytest_cache
