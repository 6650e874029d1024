# Two entry points for a fresh machine (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip

.PHONY: venv test lint demo bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check .

test: venv lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: venv
	$(PY) scripts/demo.py

bench: venv
	$(PY) bench/bench_export.py

clean:
	rm -rf $(VENV) .cache out reports .pytest_cache
