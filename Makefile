# `make bench`: set up .venv if needed, then compare fastload with torch's DataLoader.
# `make test`:  set up .venv if needed, then run the whole test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fastload-installed

.PHONY: bench test setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

bench: $(STAMP)
	$(PY) -m fastload.bench $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
