# dsim: the two commands of the README, and the book.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: setup tour lint test test-cpu-matrix notebooks book slides clean

# Create the virtual environment and install dsim with its notebook and test extras.
# torch==2.13.0 is pinned here (a CPU build is available locally); the package itself asks for torch>=2.4.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[notebooks,test]"
	touch $@

setup: $(VENV)/.installed

# The main job: train the tiny model, plot its loss, print every preset's parameters.
tour: setup
	$(VENV)/bin/dsim tour

# Style: ruff's lint rules and formatting (configured in pyproject.toml; lines of at most 100).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Every test: the style check, unit, property and browser tests, and each notebook under nbval.
# pytest's exit status 5 means it collected no test: reported, and not turned into a failure.
# A hang fails fast with a traceback: every test (and every notebook cell) has TEST_TIMEOUT
# seconds (pytest-timeout; the browser tests that build the book set their own, longer one), and
# nbval stops a cell after NBVAL_CELL_TIMEOUT. Idle OpenMP threads sleep instead of spinning
# (OMP_WAIT_POLICY=PASSIVE): a notebook that pins 2 torch threads on a busy 2-core machine ran
# 8x slower with spinning threads. The notebooks pin their own thread counts where their numbers
# depend on it; the kernels run one at a time, so more threads per kernel do not compete.
TEST_TIMEOUT ?= 300
NBVAL_CELL_TIMEOUT ?= 240
PYTEST_ARGS ?= tests/ --nbval notebooks/
test: setup lint
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q $(PYTEST_ARGS) -p no:cacheprovider \
	  --timeout=$(TEST_TIMEOUT) --nbval-cell-timeout=$(NBVAL_CELL_TIMEOUT) --durations=10; \
	status=$$?; if [ $$status -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$status

# The notebooks and the tests against committed values under each ATEN_CPU_CAPABILITY (default,
# avx2, unset) and OMP_NUM_THREADS (1, 2): one pass/fail line per setting (about 25 minutes).
test-cpu-matrix: setup
	PY=$(PY) scripts/check_cpu_kernels.sh

# The notebooks: notebooks/NN_topic.py (Jupytext percent source, paired in jupytext.toml) is
# synced into notebooks/NN_topic.ipynb, which is executed in place where its source changed (one
# at a time, OMP_NUM_THREADS=1; scripts/run_notebooks.py). Commit both files of a pair.
# NOTEBOOKS=03_memory_and_kv_cache limits it to some; FORCE=1 re-executes unchanged ones.
NOTEBOOKS ?=
notebooks: setup
	$(PY) scripts/run_notebooks.py $(NOTEBOOKS) $(if $(FORCE),--force)

# The book: converts the committed notebook runs (make notebooks), builds chapters/ with mdBook
# into build/book and checks every link, include and figure (scripts/build_book.py --execute
# runs the notebooks afresh first).
book: setup
	$(PY) scripts/build_book.py

# Lecture slides: each chapter's notebook as an offline reveal.js deck in build/slides.
slides: setup
	$(PY) scripts/build_slides.py

clean:
	rm -rf build runs artifacts chapters/generated chapters/vendor
