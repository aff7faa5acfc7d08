# The three commands of the README's quickstart, plus maintainer targets.
#   make install    create .venv, install the CPU build of torch first, then the course with
#                   its lab, dev and docs extras at the versions in constraints.txt
#   make lectures   JupyterLab on notebooks/student/ (the student editions)
#   make test       unit tests + every notebook under nbval (2 workers)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# Extra pip arguments for torch, e.g. a CUDA wheel index (see README, "GPU").
TORCH_PIP_ARGS ?=
# Per-cell timeout for notebooks, seconds.
CELL_TIMEOUT ?= 240
NB ?=

export TQDM_DISABLE := 1
export MPLBACKEND := Agg
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONHASHSEED := 0

.PHONY: install lectures test test-gpu lint format refresh-notebook slides site check-students

# pyproject.toml states ranges; constraints.txt the exact versions the committed notebook
# outputs come from. Its torch line is replaced by TORCH_VERSION (written into the venv).
install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first: the course's range admits this build, so the next line keeps it.
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)" $(TORCH_PIP_ARGS)
	sed 's/^torch==.*/torch==$(TORCH_VERSION)/' constraints.txt > $(VENV)/constraints.txt
	$(BIN)/python -m pip install --quiet -c $(VENV)/constraints.txt -e ".[lab,dev,docs]"

# Containers often run as root, where Jupyter refuses to start without --allow-root.
LAB_ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

lectures:
	$(BIN)/jupyter lab notebooks/student/ $(LAB_ROOT_FLAG)

# Two workers on two cores: one BLAS/OpenMP thread each (oversubscription made small
# training loops several times slower here). Notebook kernels inherit the setting.
test:
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadscope --nbval-cell-timeout=$(CELL_TIMEOUT) -q

# The notebooks on a GPU: numerics differ from the committed CPU outputs, so outputs are
# not compared (nbval lax mode); every cell must still run and every assert hold.
test-gpu:
	DGPT_DEVICE=cuda $(BIN)/python -m pytest notebooks homework --nbval-lax -p no:xdist -q

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Re-execute one notebook in place and commit-ready: make refresh-notebook NB=notebooks/00_setup.ipynb
refresh-notebook:
	$(BIN)/python scripts/refresh_notebook.py $(NB)

# Lecture decks (Marp, needs node >= 18 and npm) into slides/dist/.
slides:
	scripts/build_slides.sh

# Course website into site/_build/html (Sphinx + myst-nb, warnings are errors).
site:
	PYTHON=$(BIN)/python scripts/build_site.sh

# Fail if a committed student edition (notebooks/student/, homework/*/student.ipynb) is stale.
check-students:
	$(BIN)/python -m decoding_gpt.tools.homework make-student --check

# SAELens in its own venv (sae-lens 6 needs transformer-lens < 4: never in .venv), for
# tests/test_sae_saelens.py's SAELens half and scripts/saelens_recipe.py. torch first.
SAELENS_VENV ?= .venv-saelens
SAELENS_VERSION ?= 6.54.12

.PHONY: saelens-venv saelens-fixtures

saelens-venv:
	$(PYTHON) -m venv $(SAELENS_VENV)
	$(SAELENS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SAELENS_VENV)/bin/python -m pip install --quiet "torch==$(TORCH_VERSION)" $(TORCH_PIP_ARGS)
	$(SAELENS_VENV)/bin/python -m pip install --quiet "sae-lens==$(SAELENS_VERSION)"

# Rewrite tests/fixtures/saelens: our files (main venv), then SAELens's (its venv), which
# also loads ours in SAELens and prints the differences.
saelens-fixtures:
	$(BIN)/python scripts/make_saelens_fixtures.py ours --out tests/fixtures/saelens
	$(SAELENS_VENV)/bin/python scripts/make_saelens_fixtures.py saelens --out tests/fixtures/saelens
