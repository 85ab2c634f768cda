# The two commands of the README:
#   make quick   set up what is missing, run the quick synthetic benchmark, print its report
#   make test    set up what is missing, run the test suite
# Set-up creates .venv and installs hcibench into it with constraints.txt, which pins the
# CPU build of torch so that pip never swaps in a multi-GB CUDA build.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hcibench-installed
RUN ?= runs/synthetic-quick

.PHONY: setup quick test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

quick: $(STAMP)
	$(BIN)/hcibench run --grid benchmarks/grids/quick.toml --out $(RUN)
	$(BIN)/hcibench report $(RUN)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check hcibench plugins tests benchmarks results
	$(BIN)/ruff format --check hcibench plugins tests benchmarks results

bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks --benchmark-only -s

clean:
	rm -rf $(VENV) runs .pytest_cache .benchmarks
