# `make demo`, `make test`, `make bench`: each creates .venv if it is missing and installs what it needs,
# at the versions pinned in constraints.txt (every package, indirect ones included), so a new release on the
# registry never changes what a fresh clone installs. `make test-latest` tries the newest allowed versions in
# a venv of its own; `make lock` then writes them to constraints.txt, to be reviewed and committed.
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
LATEST_VENV ?= build/latest-venv
# The pins, for every pip call of the venvs this Makefile builds, the isolated build of the wheel included
# (pip hands PIP_CONSTRAINT on to the pip that fills a build environment).
CONSTRAINTS := $(CURDIR)/constraints.txt
PINNED := PIP_CONSTRAINT=$(CONSTRAINTS)
TORCH_INSTALL = -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
# gpu-check installs nothing (a lent GPU machine has no network): .venv's python where there is one, else python3
GPU_PYTHON ?= $(shell test -x $(PY) && echo $(PY) || echo $(PYTHON))

.PHONY: demo test test-latest lock bench install wheel-check gpu-check kernels-aot kernels-aot-full clean

$(VENV)/.installed: pyproject.toml setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PINNED) $(PY) $(TORCH_INSTALL)
	$(PINNED) $(PY) -m pip install -q -e ".[test,matplotlib]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) examples/train_demo.py

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

# The newest versions pyproject.toml allows (torch stays at TORCH_SPEC: upgrading it is its own decision),
# in a venv of their own, then the whole suite. Not in CI.
test-latest:
	$(PYTHON) -m venv --clear $(LATEST_VENV)
	$(LATEST_VENV)/bin/python $(TORCH_INSTALL)
	echo "$(TORCH_SPEC)" > $(LATEST_VENV)/torch-only.txt
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -c $(LATEST_VENV)/torch-only.txt \
		-e ".[test,matplotlib]"
	$(LATEST_VENV)/bin/python -m pip list --format=freeze | grep -i -E "^(torch|transformers|triton|peft|kernels)="
	$(LATEST_VENV)/bin/python -m pytest $(PYTEST_ARGS)

# constraints.txt from the venv `make test-latest` passed in (pip itself and minibridge left out).
lock:
	test -x $(LATEST_VENV)/bin/python || { echo "run 'make test-latest' first"; exit 1; }
	{ sed -n '/^#/p' constraints.txt; $(LATEST_VENV)/bin/python -m pip freeze --all --exclude-editable \
		| grep -v -E "^(pip|minibridge)[=@ ]" | sed -E 's/^(torch==[^+]*)\+.*/\1/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	@echo "constraints.txt rewritten: review 'git diff constraints.txt', run 'make test', then commit it"

bench: $(VENV)/.installed
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done
	$(PY) benchmarks/summarize.py

# On a machine lent a GPU (no network, a bare checkout, its own python3): every gpu-marked test, the CUDA
# kernel benchmarks and a 1B-shaped bf16 training step vs transformers within 6 minutes (QUICK=1: 3), one report (benchmarks/results/gpu-check-<gpu>.md) written
# as the stages end. Without CUDA it says so and fails; DRY_RUN=1 checks its plan on any machine. It installs nothing.
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py $(if $(QUICK),--quick) $(if $(DRY_RUN),--dry-run)

# Every Triton kernel compiled for sm_80, sm_90 and sm_100 without a GPU, with the launches the host code
# chooses: fails on a compile error, shared memory over the target's limit or spills over a kernel's
# threshold; the table goes to benchmarks/results/kernels-aot.md. In CI. kernels-aot-full: every shape,
# dtype and mask (benchmarks/results/kernels-aot-full.md), not in CI.
kernels-aot: $(VENV)/.installed
	$(PY) benchmarks/kernels_aot.py

kernels-aot-full: $(VENV)/.installed
	$(PY) benchmarks/kernels_aot.py --full

# Built by pip as `pip install .` builds it (isolated, setuptools from pyproject.toml, pinned), from a clean
# build/; torch goes in first as for .venv, so the wheel's `torch>=2.4` never pulls a CUDA build. The test
# then runs from outside the tree: every module imported from the fresh environment, every CLI and console
# script `--help`.
wheel-check: $(VENV)/.installed
	rm -rf build/lib build/bdist* $(WHEEL_DIR)/minibridge-*.whl
	$(PYTHON) -m venv --clear $(WHEEL_VENV)
	$(PINNED) $(WHEEL_VENV)/bin/python $(TORCH_INSTALL)
	$(PINNED) $(WHEEL_VENV)/bin/python -m pip wheel -q --no-deps -w $(WHEEL_DIR) .
	$(PINNED) $(WHEEL_VENV)/bin/python -m pip install -q $(WHEEL_DIR)/minibridge-*.whl
	MINIBRIDGE_WHEEL_PYTHON=$(WHEEL_VENV)/bin/python $(PY) -m pytest -p no:cacheprovider \
		tests/test_packaging.py::test_installed_wheel_imports_every_module_and_runs_every_cli

clean:
	rm -rf $(VENV) build dist *.egg-info
