# semiseg_lit — the two set-up commands are `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# pinned versions of every dependency (torch 2.14.1 / torchvision 0.29.1, ...)
CONSTRAINTS := requirements/constraints.txt
STAMP  := $(VENV)/.installed
# pytest-xdist workers for `make test` (CI machines have 2 cores; 0 runs the suite in one process)
TEST_WORKERS ?= 2

.PHONY: install run test test-fast lint format benchmark clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.cfg $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=23" wheel "setuptools>=68"
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

## train the default experiment (AEL on synthscapes, the embedded dataset: = +experiment=ael_synthscapes) on the CPU
run: install
	$(PY) -m semiseg_lit trainer.accelerator=cpu $(ARGS)

## the whole test suite (unit + end-to-end + wheel smoke test)
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal $(ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(ARGS)

lint: install
	$(PY) -m ruff check src tests benchmarks

format: install
	$(PY) -m ruff check --fix src tests benchmarks
	$(PY) -m ruff format src tests benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info .pytest_cache logs
