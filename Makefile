# Two commands do all set-up: `make run` and `make test`. Each creates or refreshes .venv
# from the pinned requirement files, then runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed
REQS := requirements.txt requirements-dev.txt $(wildcard requirements-offline.txt requirements-web.txt) pyproject.toml

.PHONY: run test bench venv clean

$(STAMP): $(REQS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip==25.3 setuptools==80.9.0 wheel
	$(PIP) install -q -r requirements.txt -r requirements-dev.txt
	@if [ -f requirements-offline.txt ]; then $(PIP) install -q -r requirements-offline.txt; fi
	@if [ -f requirements-offline-nodeps.txt ]; then $(PIP) install -q --no-deps -r requirements-offline-nodeps.txt; fi
	@if [ -f requirements-web.txt ]; then $(PIP) install -q -r requirements-web.txt; fi
	$(PIP) install -q --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/voicebot run

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV)
