# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINT := $(VENV)/constraints.txt

.PHONY: demo test venv clean

venv: $(STAMP)

# torch first (CPU wheel), then the project constrained to that torch so pip never pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	echo "torch==2.13.0" > $(CONSTRAINT)
	$(BIN)/pip install -q -c $(CONSTRAINT) -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ispdc run recipes/quickstart.yaml --workdir runs/quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf runs .pytest_cache
