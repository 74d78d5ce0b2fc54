# Two commands do all set-up: `make run` and `make test`. Each creates or refreshes .venv
# from the pinned requirement files, then runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed
REQS := requirements.txt requirements-dev.txt $(wildcard requirements-offline.txt requirements-web.txt) pyproject.toml

.PHONY: run test bench venv clean chromium

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

test: $(STAMP) chromium
	$(PY) -m pytest

# The browser tests drive Debian's Chromium (Playwright's own browser download does not work
# here); where apt is available and we are root, install it, otherwise those tests skip.
chromium:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV)
