# Two commands do all set-up: `make run` and `make test`. Each creates or refreshes .venv
# from the pinned requirement files, then runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed
REQS := requirements.txt requirements-dev.txt $(wildcard requirements-offline.txt requirements-web.txt) pyproject.toml Makefile

# llama-cpp-python (offline LLM) is built from source. Left to itself it tunes the build to the
# CPU that compiles it (GGML_NATIVE), and pip's wheel cache hands that build to any later
# venv. On one of this project's VMs (an Intel CPU advertising AMX and AVX512-FP16) the native
# build died with SIGILL on the very machine that built it. So it is built once without
# CPU-specific tuning (AVX2/FMA/F16C on x86-64, the baseline elsewhere) into a wheelhouse of
# our own, named after those flags, and installed from there.
LLAMA_REQ := $(shell grep -E '^llama-cpp-python==' requirements-offline.txt 2>/dev/null)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF
WHEELHOUSE := $(HOME)/.cache/voicebot/wheels-$(shell uname -m)-ggml-portable
LLAMA_WHEEL := $(WHEELHOUSE)/llama_cpp_python-$(subst llama-cpp-python==,,$(LLAMA_REQ))-*.whl

.PHONY: run test bench venv clean chromium

$(STAMP): $(REQS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip==25.3 setuptools==80.9.0 wheel
	$(PIP) install -q -r requirements.txt -r requirements-dev.txt
	@if [ -n "$(LLAMA_REQ)" ]; then \
		ls $(LLAMA_WHEEL) >/dev/null 2>&1 || \
			CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) wheel -q --no-deps --no-cache-dir -w $(WHEELHOUSE) "$(LLAMA_REQ)"; \
		$(PIP) install -q --no-deps --force-reinstall $(LLAMA_WHEEL); \
	fi
	@if [ -f requirements-offline.txt ]; then $(PIP) install -q --find-links $(WHEELHOUSE) -r requirements-offline.txt; fi
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
