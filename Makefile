# Every target does its own set-up on a fresh machine: it creates .venv and installs
# the project with its dev extra when pyproject.toml is newer than the last install.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit clean

# PyICU (principal ids: Unicode TR39) builds from source against ICU: it needs libicu-dev,
# pkg-config and a C++ compiler, installed with apt-get where they are missing.
$(STAMP): pyproject.toml
	pkg-config --exists icu-i18n && command -v c++ >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libicu-dev pkg-config g++; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/charter demo

lint: $(STAMP)
	$(BIN)/ruff check src tests examples sandbox
	$(BIN)/ruff format --check src tests examples sandbox

typecheck: $(STAMP)
	$(BIN)/mypy

# The review app's browser tests drive a real headless Chromium through Selenium: Debian's
# chromium and chromium-driver packages (Selenium Manager downloads nothing: both paths are given).
BROWSER := /usr/bin/chromium /usr/bin/chromedriver

$(BROWSER):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver

# The PostgreSQL tests start a private server of their own (tests/_pg.py) from Debian's
# postgresql package: a free loopback port, a temporary data directory, stopped at the end.
.PHONY: postgres
postgres:
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

unit: $(STAMP) $(BROWSER) postgres
	$(BIN)/pytest -q

test: lint typecheck unit

clean:
	rm -rf $(VENV) .charter .pytest_cache .mypy_cache .ruff_cache
