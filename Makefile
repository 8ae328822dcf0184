# Two commands do everything on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv on first use. torch is installed on its own first: on a CPU machine
# `pip install torch==2.13.0` takes the CPU build where one is provided (as on this project's machines);
# elsewhere set TORCH_SPEC, e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu".
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
IMPI ?= .impi

.PHONY: setup demo test test-quick lint mutate impi
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-ray.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -r requirements.txt -r requirements-dev.txt -r requirements-ray.txt
	touch $@

# Intel MPI (tests/multinode/test_intel_mpi.py) in a prefix of its own: in .venv its mpirun would replace MPICH's.
impi: $(IMPI)/.installed

$(IMPI)/.installed: requirements-impi.txt | setup
	$(BIN)/python -m pip install -q --prefix $(IMPI) -r requirements-impi.txt
	touch $@

demo: setup
	$(BIN)/python scripts/demo.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: lint impi
	$(BIN)/python -m pytest -q

test-quick: setup
	$(BIN)/python -m pytest -q -m "not slow and not distributed"

# Mutation testing (long on 2 cores; not part of CI): `make mutate MUTANTS="finetuning.data.packing*"` for a subset.
MUTANTS ?=
MUTATE_CHILDREN ?= 2
mutate: setup
	$(BIN)/python -m pip install -q -r requirements-mutate.txt
	$(BIN)/mutmut run --max-children $(MUTATE_CHILDREN) $(MUTANTS)
	$(BIN)/mutmut results
