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

# The embedded default: a small synthetic FASTA embedded on CPU with a random-weight tiny ESM-2.
run: $(STAMP)
	$(BIN)/virnucpro make-fasta -o results/synthetic.fasta --num-sequences 500 --seed 1 --profile short-reads
	$(BIN)/virnucpro embed results/synthetic.fasta -o results/embed_demo --model esm2_t6_8M_UR50D --random-weights --device cpu

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) results/synthetic.fasta results/embed_demo
