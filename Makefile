# The two commands (see README): `make demo` runs the archive job on the bundled sample,
# `make test` runs lint and the test suite. Both install what they need into .venv first.
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= out/demo

.PHONY: setup demo test lint bench
setup:
	@bash scripts/setup.sh

demo: setup
	RAY_AUTH_MODE=disabled $(BIN)/vidarc archive samples $(DEMO_OUT) --codec glvc --target-bpp 0.05 --verify-fraction 1.0
	$(BIN)/vidarc ls $(DEMO_OUT)
	$(BIN)/vidarc audit $(DEMO_OUT) --html $(abspath $(DEMO_OUT))/report.html

test: setup
	$(BIN)/ruff check .
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q --durations=25

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
