# Two entry points for a fresh machine (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip

.PHONY: venv test test-fast test-edge lint demo bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check .

# Everything but the arm64 emulation (make verify-pi), which alone takes ~6 min: the suite stays
# under 15 minutes on 2 cores; CI (.ci/run) runs verify-pi after it.
test: venv lint
	$(PY) -m pytest -q -m "not qemu" $(PYTEST_ARGS)

# The inner loop: no slow end-to-end tests, no emulation (a few minutes).
test-fast: venv lint
	$(PY) -m pytest -q -m "not slow and not qemu" $(PYTEST_ARGS)

# The device package alone, as a Pi has it: a venv with feredge[edge] and no TensorFlow, and the
# device-side tests on the shipped default model.
EDGE_VENV ?= .venv-edge
EDGE_TESTS = tests/test_edge_cli.py tests/test_edge_pipeline.py tests/test_edge_detect.py tests/test_daemon.py \
	tests/test_daemon_sources.py tests/test_reliability.py tests/test_config.py tests/test_track.py \
	tests/test_contract.py tests/test_fsutil.py tests/test_mqtt.py tests/test_fleet.py tests/test_systemd.py
$(EDGE_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(EDGE_VENV)
	$(EDGE_VENV)/bin/python -m pip install -q --upgrade pip
	$(EDGE_VENV)/bin/python -m pip install -q -e '.[edge]' pytest scikit-image
	touch $@

test-edge: $(EDGE_VENV)/.installed
	$(EDGE_VENV)/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('tensorflow') is not None)" \
		|| { echo "test-edge: TensorFlow is installed in $(EDGE_VENV)"; exit 1; }
	$(EDGE_VENV)/bin/python -m pytest -q -p no:cacheprovider $(EDGE_TESTS) $(PYTEST_ARGS)

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
	rm -rf $(VENV) $(EDGE_VENV) .cache out reports .pytest_cache

# Raspberry Pi bundle (docs/flash-a-pi.md): make bundle TARGET=rpi-trixie-arm64 MODEL=out/fer
.PHONY: bundle verify-pi verify-boot
TARGET ?= rpi-trixie-arm64
bundle: venv
	$(VENV)/bin/feredge bundle --target $(TARGET) $(if $(MODEL),--model $(MODEL)) --out out/bundle-$(TARGET)

# The bundle installed and run on emulated arm64 (Bookworm and Trixie; CI runs it after make test).
verify-pi: venv
	FEREDGE_QEMU_TARGETS=all $(PY) -m pytest -q -s -m qemu tests/test_qemu_arm64.py

# The first boot for real: an emulated arm64 Trixie card booted twice under qemu-system-aarch64 with
# systemd and cloud-init; checks the service there (scripts/verify_boot.py; root; 13 min from a fresh clone, 7 min warm).
verify-boot: venv
	$(PY) scripts/verify_boot.py
