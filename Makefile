# audiolab: `make train` runs the default job, `make test` the test suite; each installs first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install.stamp
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := python3 -m uv
endif

.PHONY: install train test lint dashboard clean

install: $(STAMP)

# The stamp is rebuilt when the dependency spec or the lock changes; `--locked` refuses a stale lock.
# EXTRAS is what every target syncs (`uv sync` removes packages not asked for, so all must name the same ones):
# dev (pytest, ruff, import-linter), cdpam (`loss=cdpam`, `metrics.val_cdpam`) and export (`audiolab export
# --format onnx` and its check with onnxruntime).
EXTRAS := --extra dev --extra cdpam --extra export
$(STAMP): pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --locked --compile-bytecode $(EXTRAS)
	@touch $@

train: $(STAMP)
	$(PY) run.py $(ARGS)

# The pytest exit status is also written to .pytest-status so that .ci/run can return it as is.
test: $(STAMP)
	@rm -f .pytest-status; status=0; $(PY) -m pytest $(PYTEST_ARGS) || status=$$?; \
	echo $$status > .pytest-status; exit $$status

# optuna-dashboard (the optional `dashboard` extra) on the default sweep storage; STORAGE=... for another.
STORAGE ?= sqlite:///outputs/optuna.db
dashboard: $(STAMP)
	$(UV) sync --locked $(EXTRAS) --extra dashboard
	$(VENV)/bin/optuna-dashboard "$(STORAGE)" --host 127.0.0.1 --port 8080

# ruff, and import-linter's layers contract (pyproject.toml [tool.importlinter]).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .pytest-status .pytest_cache .ruff_cache
