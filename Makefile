# Two entry points for a fresh machine: `make demo` (set up, run the pipeline on the synthetic
# demo dataset) and `make test` (set up, run the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: setup demo test test-fast check-demo report dag clean

$(BIN)/snakemake: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

setup: $(BIN)/snakemake

demo: setup
	$(BIN)/snakemake --cores $(CORES)

report: setup
	$(BIN)/snakemake --cores $(CORES) --report results/report.html

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not slurm"

# The full demo in a fresh workdir (or DEMO_WORKDIR=dir, kept), compared with the figures stored
# in tests/expected/ (README, Development).
check-demo: setup
	CELLSEG_DEMO_CORES=$(CORES) CELLSEG_DEMO_WORKDIR=$(DEMO_WORKDIR) $(BIN)/python -m pytest -q --run-demo tests/test_demo_figures.py

dag: setup
	$(BIN)/snakemake --rulegraph | dot -Tsvg > docs/rulegraph.svg

clean:
	rm -rf results logs .snakemake
