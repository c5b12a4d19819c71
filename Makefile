# Two entry points for a fresh machine: `make demo` (set up, run the pipeline on the synthetic
# demo dataset) and `make test` (set up, run the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: setup demo test test-fast test-workflow test-slurm check-demo report dag docs format lint clean

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

# The test tiers (README, Development): `test` runs all of them, as CI does. The unit tier
# starts no Snakemake and trains a few steps at most; the workflow tier runs Snakemake on tiny
# data, sharing one finished run that the first worker to need it builds; the SLURM tier needs
# the local cluster. Tests run in one pytest-xdist worker per core (TEST_WORKERS): most of a
# workflow test is one Snakemake process building its DAG or running one job, so a second worker
# fills the idle core. Whole
# files go to a worker, heaviest first (tests/conftest.py), so module fixtures are built once
# and the SLURM tests, all in one file, run one at a time on the 2-CPU test cluster.
TEST_WORKERS ?= $(CORES)
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: setup
	$(PYTEST)

test-fast: setup
	$(PYTEST) -m "not workflow and not slow and not slurm"

test-workflow: setup
	$(PYTEST) -m "(workflow or slow) and not slurm"

test-slurm: setup
	$(PYTEST) -m slurm

# The full demo in a fresh workdir (or DEMO_WORKDIR=dir, kept), compared with the figures stored
# in tests/expected/ (README, Development).
check-demo: setup
	CELLSEG_DEMO_CORES=$(CORES) CELLSEG_DEMO_WORKDIR=$(DEMO_WORKDIR) $(BIN)/python -m pytest -q --run-demo tests/test_demo_figures.py

# The generated pages of docs/ (tests/test_generated_docs.py fails when they are stale):
# docs/rulegraph.dot (`snakemake --rulegraph`, default config, in an empty directory) and its
# rendering docs/rulegraph.svg (needs Graphviz: apt-get install graphviz); docs/config.md from
# the config schema, config.yaml's comments and the train presets.
dag: setup
	$(BIN)/python scripts/generate_docs.py rulegraph
	dot -Tsvg -o docs/rulegraph.svg docs/rulegraph.dot

docs: dag
	$(BIN)/python scripts/generate_docs.py config

# Snakemake's conventions, also checked by `make test`: snakefmt's formatting and the linter.
format: setup
	$(BIN)/snakefmt Snakefile workflow

lint: setup
	$(BIN)/snakefmt --check Snakefile workflow
	$(BIN)/snakemake --lint

clean:
	rm -rf results logs .snakemake
