# Two commands on a fresh machine: `make run` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test venv clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

# The embedded default: the whole workflow locally on CPU with a random-weight tiny ESM-2 -> results/report.html
run: $(STAMP)
	$(BIN)/snakemake

test: $(STAMP)
	$(BIN)/ruff check scripts tests
	$(BIN)/ruff format --check scripts tests
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) .snakemake && find results -mindepth 1 ! -name README.md -exec rm -rf {} +
