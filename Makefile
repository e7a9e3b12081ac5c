# Fresh-machine set-up: `make demo` and `make test` create .venv, install torch (TORCH_SPEC) first
# when none is importable, install the package with its test extra, then run.
# `make test` = ruff (lint + format check) + mypy + the docs site (mkdocs --strict) + pytest (the tests and
# the package's doctests).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mechir-nig-installed

.PHONY: install demo test lint docs format bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || { echo "installing $(TORCH_SPEC) first (no torch in $(VENV))"; $(PY) -m pip install "$(TORCH_SPEC)"; }
	$(PY) -m pip install -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

demo: install
	HF_HUB_OFFLINE=1 $(PY) demos/quickstart.py
	HF_HUB_OFFLINE=1 $(VENV)/bin/mechir-nig demo

lint: install
	$(PY) -m ruff check mechir_nig tests benchmarks demos
	$(PY) -m ruff format --check mechir_nig tests benchmarks demos
	$(PY) -m mypy

test: install lint docs
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests mechir_nig --doctest-modules -q

docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -d build/site

bench: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/forward.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/nig.py

clean:
	rm -rf $(VENV) build *.egg-info

format: install
	$(PY) -m ruff check --fix mechir_nig tests benchmarks demos
	$(PY) -m ruff format mechir_nig tests benchmarks demos
