# Fresh-machine set-up: `make demo` and `make test` create .venv, install torch (TORCH_SPEC) first
# when none is importable, install the package with its test extra, then run.
# `make test` = ruff (lint + format check) + mypy + pytest (the tests and the package's doctests) + the docs
# site (mkdocs --strict), built after the tests so that it shows the notebooks they executed (docs/notebooks/).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mechir-nig-installed

.PHONY: install demo browser test lint docs format bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || { echo "installing $(TORCH_SPEC) first (no torch in $(VENV))"; $(PY) -m pip install "$(TORCH_SPEC)"; }
	$(PY) -m pip install -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

DEMO_STAMP := $(VENV)/.mechir-nig-demo-installed

$(DEMO_STAMP): pyproject.toml | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || { echo "installing $(TORCH_SPEC) first (no torch in $(VENV))"; $(PY) -m pip install "$(TORCH_SPEC)"; }
	$(PY) -m pip install -e ".[demo]"
	@touch $(DEMO_STAMP)

# the main job on the embedded default: attribute the judged pairs, a short pruning study, a TFC1
# patching pass, the HTML report (its path is the last line printed)
demo: $(DEMO_STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/mechir-nig demo

# chromium + chromedriver for tests/test_report_browser.py (Debian packages chromium, chromium-driver)
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	  { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); $$SUDO apt-get update && \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; }

lint: install
	$(PY) -m ruff check mechir_nig tests benchmarks demos
	$(PY) -m ruff format --check mechir_nig tests benchmarks demos
	$(PY) -m mypy

test: install browser lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests mechir_nig --doctest-modules -q --durations=20
	$(MAKE) docs

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
