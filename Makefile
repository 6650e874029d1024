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

# Numbers, not assertions: each script prints its measurements beside its targets/baseline.
bench: venv
	$(PY) bench/bench_export.py
	$(PY) bench/bench_parity.py
	$(PY) bench/bench_edge.py
	$(PY) bench/bench_daemon.py
	$(PY) bench/bench_model.py
	$(PY) bench/bench_fleet.py

clean:
	rm -rf $(VENV) .cache out reports .pytest_cache

# Raspberry Pi bundle (docs/flash-a-pi.md): make bundle TARGET=rpi-trixie-arm64 MODEL=out/fer
.PHONY: bundle verify-pi
TARGET ?= rpi-trixie-arm64
bundle: venv
	$(VENV)/bin/feredge bundle --target $(TARGET) $(if $(MODEL),--model $(MODEL)) --out out/bundle-$(TARGET)

# The bundle installed and run on emulated arm64: Bookworm is part of `make test`; this runs it
# alone and adds the Trixie bundle (~2 min more).
verify-pi: venv
	FEREDGE_QEMU_TARGETS=all $(PY) -m pytest -q -s -m qemu tests/test_qemu_arm64.py
