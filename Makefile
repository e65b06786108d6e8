# dsim: the two commands of the README, and the book.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: setup tour test book clean

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

# Every test: unit, property and browser tests, and each notebook under nbval.
# pytest's exit status 5 means it collected no test: reported, and not turned into a failure.
test: setup
	$(PY) -m pytest -q tests/ --nbval notebooks/ -p no:cacheprovider; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$status

# The book: executes the notebooks, converts them, builds chapters/ with mdBook into build/book.
book: setup
	$(PY) scripts/build_book.py

clean:
	rm -rf build runs artifacts chapters/generated chapters/vendor
