# Two commands (see README):  `make run`  and  `make test`; `make lab` opens the collection.
# Both create a project-local virtual environment in .venv on first use.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test lab setup benchmark clean-venv

setup: $(STAMP)

# Reinstall whenever the dependency list changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[notebooks,test]"
	touch $(STAMP)

# The main job: execute every notebook in order, in place, each in a fresh kernel
# (this regenerates figures/; the shipped checkpoints are only read), then export them to html/.
run: $(STAMP)
	$(PY) scripts/run_notebooks.py

# Every test: unit tests in tests/ and every notebook under nbval (see pyproject).
test: $(STAMP)
	$(PY) -m pytest

# Performance: ms per step against grid_sample, a plain re-implementation and icon_registration,
# time to quality, inference, learned vs classical, notebook times -> benchmarks/RESULTS.md.
benchmark: $(STAMP)
	$(PY) -m pip install --quiet -e ".[benchmark]"
	$(PY) benchmarks/performance.py

# JupyterLab on the collection, with the project's settings (jupyter_config/): no news,
# no update checks, nothing fetched from the internet.
lab: $(STAMP)
	JUPYTER_CONFIG_PATH=$(CURDIR)/jupyter_config $(VENV)/bin/jupyter lab

clean-venv:
	rm -rf $(VENV)
