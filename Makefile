# The two quick-start commands: `make run` (the quick study end to end) and `make test`.
# Both first build .venv from the pinned lock (once; again when the lock changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 4
STUDY ?= quick
# Offline machines: a folder with the four MNIST .gz files is copied instead of downloading
# (CI and this project's sandboxes keep one next to the checkout).
MNISTBENCH_MNIST_MIRROR ?= $(abspath $(wildcard ../shared/data/mnist/MNIST/raw))
export MNISTBENCH_MNIST_MIRROR
# Nothing is activated or put on PATH: the workflow's rules run the package with the
# interpreter that runs snakemake ($(BIN)/python).

.PHONY: setup run test clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

run: setup
	$(BIN)/snakemake --cores $(CORES) all --config study=$(STUDY)
	@echo "Replication report: $(abspath reports/$(STUDY)/index.html)"

test: setup
	$(BIN)/python -m pytest -n auto --dist loadfile -ra --durations=15  # a worker per core; a file stays on one worker (its module fixtures train once); CI allows 30 minutes

# Generated outputs only: the tracked replication record (results/replication/, reports/replication/)
# stays, with any checkpoint of a run in progress there.
clean:
	find results reports -mindepth 1 -maxdepth 1 ! -name replication -exec rm -rf {} + 2>/dev/null || true
	rm -rf logs .snakemake
