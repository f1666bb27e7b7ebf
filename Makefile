# forewarn: two commands do everything on a fresh clone.
#   make demo   set up .venv, run the whole pipeline on the embedded stack, print a summary, draw a report
#   make test   set up .venv, lint (ruff: Airflow and security rules) and run the tests
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV_VERSION := 0.13.8
LOCK   := requirements/lock-py311.txt
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint venv lock stack-up stack-down clean mwaa-bundle airflow browser

$(VENV)/.installed: $(LOCK) pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync --quiet --python $(BIN)/python $(LOCK)
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	@touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/forewarn demo

# Airflow 3 (UI on http://127.0.0.1:8080) on the embedded stack with a live producer; Ctrl-C stops it all.
airflow: venv
	$(BIN)/forewarn airflow

lint: venv
	$(BIN)/ruff check .

test: lint browser
	$(BIN)/pytest

# Debian's Chromium, for the test that opens the forewarn page in the Airflow UI (tests/test_ui_browser.py).
browser:
	@command -v chromium >/dev/null || { echo "installing Debian's chromium package for the browser test"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

stack-up: venv
	$(BIN)/forewarn stack up

stack-down: venv
	$(BIN)/forewarn stack down

# Re-resolve the pinned set against MWAA's Airflow 3.3.1 constraints (see scripts/lock.sh).
lock: venv
	scripts/lock.sh

# What Amazon MWAA takes: build/mwaa/{dags/, plugins.zip, requirements.txt} (scripts/mwaa_bundle.py).
mwaa-bundle: venv
	$(BIN)/python scripts/mwaa_bundle.py

clean:
	-$(BIN)/forewarn stack down
	rm -rf .forewarn build
