# Every target bootstraps its own virtual environment: nothing is assumed installed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest test-sdk-floor bench soak clean chromium screenshot \
        postgres-server

# The oldest line-bot-sdk pyproject.toml declares, and a second environment holding it.
SDK_FLOOR    := $(shell sed -n 's/^ *"line-bot-sdk>=\([0-9.]*\)".*/\1/p' pyproject.toml)
FLOOR_VENV   := .venv-sdk-floor
FLOOR_STAMP  := $(FLOOR_VENV)/.installed
# The core: handling, marking, policies, webhooks, the public API, cheap imports.
FLOOR_TESTS  := tests/test_handler.py tests/test_marking.py tests/test_policies.py \
                tests/test_webhooks.py tests/test_api.py tests/test_imports.py

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(FLOOR_STAMP): pyproject.toml
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FLOOR_VENV)/bin/python -m pip install --quiet -e . 'line-bot-sdk==$(SDK_FLOOR)' \
		'pytest>=8' 'pytest-asyncio>=0.23' 'hypothesis>=6.80'
	touch $(FLOOR_STAMP)

## make demo: run the self-contained demo conversation against the fake LINE platform,
## and write it as a page, demo.html (it says where)
demo: $(STAMP)
	$(BIN)/line-markread demo --html demo.html

## make chromium: Debian's headless browser for tests/test_demo_page.py, installed when
## absent (as root, with apt-get, as the test command's own bootstrap); otherwise a clear error
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo 'chromium is missing: installing Debian'"'"'s package' >&2; \
			apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
		else \
			echo 'chromium is missing and we cannot install it (not root, or no apt-get):' >&2; \
			echo '  run: sudo apt-get install chromium   (tests/test_demo_page.py needs it)' >&2; \
			exit 1; \
		fi; }
	@command -v chromium >/dev/null 2>&1 || { echo 'chromium still missing' >&2; exit 1; }

## make screenshot: docs/demo.png, the README's picture of the demo page
screenshot: $(STAMP) chromium
	$(BIN)/python docs/make_screenshot.py docs/demo.png

## make test: ruff, mypy --strict, the whole pytest suite, then the core tests on the SDK floor
test: lint typecheck pytest test-sdk-floor

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) chromium postgres-server
	$(BIN)/pytest

## make postgres-server: the PostgreSQL server binaries the durable-queue tests start (tests/pg.py)
# Debian's package where they are missing and we are root; otherwise a clear failure, never a skip.
PG_INITDB := $(or $(LINE_MARKREAD_PG_BIN:%=%/initdb),$(lastword $(sort $(wildcard /usr/lib/postgresql/*/bin/initdb))),$(shell command -v initdb 2>/dev/null))
postgres-server:
	@if [ -n '$(PG_INITDB)' ] && [ -x '$(PG_INITDB)' ]; then echo 'PostgreSQL server: $(PG_INITDB)'; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo 'PostgreSQL server binaries missing: installing Debian package postgresql'; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else echo 'The tests need the PostgreSQL server binaries (initdb, postgres): install the' \
		"'postgresql' package (Debian/Ubuntu: apt-get install postgresql) or set" \
		'LINE_MARKREAD_PG_BIN to the folder holding them.' >&2; exit 1; fi

## make test-sdk-floor: the core tests again, against the oldest line-bot-sdk declared
test-sdk-floor: $(FLOOR_STAMP)
	@test -n '$(SDK_FLOOR)' || { echo 'no line-bot-sdk>=X.Y in pyproject.toml' >&2; exit 1; }
	$(FLOOR_VENV)/bin/python -c 'from importlib.metadata import version; \
		v = version("line-bot-sdk"); f = lambda s: [int(x) for x in s.split(".")] + [0] * 3; \
		assert f(v)[:3] == f("$(SDK_FLOOR)")[:3], v; print("line-bot-sdk", v)'
	$(FLOOR_VENV)/bin/pytest -q -p no:cacheprovider $(FLOOR_TESTS)

soak: $(STAMP)
	$(BIN)/pytest --soak tests/test_soak.py tests/test_properties.py

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) $(FLOOR_VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
