# `make demo`, `make test`, `make bench`: each creates .venv if it is missing and installs what it needs.
# `make wheel-check`: the wheel, installed (not editable) in a fresh environment, imports and runs its CLIs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU torch where there is no CUDA (this workplace serves torch==2.13.0 as a CPU wheel). Elsewhere, on a
# CPU-only machine, add TORCH_INDEX=https://download.pytorch.org/whl/cpu to avoid the multi-GB CUDA build.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
TORCH_INDEX ?=
PYTEST_ARGS ?= -n 2
WHEEL_DIR ?= dist
WHEEL_VENV ?= build/wheel-venv

.PHONY: demo test bench install wheel-check gpu-check clean

$(VENV)/.installed: pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) examples/train_demo.py

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done
	$(PY) benchmarks/summarize.py

# On a machine lent a GPU: every gpu-marked test and the CUDA kernel benchmarks, one report
# (benchmarks/results/gpu-check-<gpu>.md). Without CUDA it says so and fails.
gpu-check: $(VENV)/.installed
	$(PY) benchmarks/gpu_check.py $(if $(QUICK),--quick)

# Built by pip as `pip install .` builds it (isolated, setuptools from pyproject.toml), from a clean build/; torch
# goes in first as for .venv, so the wheel's `torch>=2.4` never pulls a CUDA build. The test then runs from
# outside the tree: every module imported from the fresh environment, every CLI and console script `--help`.
wheel-check: $(VENV)/.installed
	rm -rf build $(WHEEL_DIR)/minibridge-*.whl
	$(PYTHON) -m venv --clear $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(WHEEL_VENV)/bin/python -m pip wheel -q --no-deps -w $(WHEEL_DIR) .
	$(WHEEL_VENV)/bin/python -m pip install -q $(WHEEL_DIR)/minibridge-*.whl
	MINIBRIDGE_WHEEL_PYTHON=$(WHEEL_VENV)/bin/python $(PY) -m pytest -p no:cacheprovider \
		tests/test_packaging.py::test_installed_wheel_imports_every_module_and_runs_every_cli

clean:
	rm -rf $(VENV) build dist *.egg-info
