# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PLUGIN_STAMP := $(VENV)/.example-plugin
CONSTRAINT := $(VENV)/constraints.txt

.PHONY: demo test venv clean browser

venv: $(STAMP)

# torch first (CPU wheel), then the project constrained to that torch so pip never pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	echo "torch==2.13.0" > $(CONSTRAINT)
	$(BIN)/pip install -q -c $(CONSTRAINT) -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ispdc run quickstart --workdir runs/quickstart

# The example plugin package (a team's own models, examples/acme_isp) is installed for the suite only.
$(PLUGIN_STAMP): $(STAMP) examples/acme_isp/pyproject.toml
	$(BIN)/pip install -q --no-deps -e examples/acme_isp
	touch $(PLUGIN_STAMP)

# Lint and type-check first (seconds), then the suite: a new violation fails CI like a failing test.
test: $(STAMP) $(PLUGIN_STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q tests

# The MLflow UI test drives the system Chromium (never `playwright install`): install the Debian package
# where it is missing and apt-get is usable (CI runs as root on Debian); otherwise a no-op and the test skips.
browser:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
			|| echo "browser: could not install chromium; the MLflow UI test will be skipped"; \
	fi

clean:
	rm -rf runs .pytest_cache
