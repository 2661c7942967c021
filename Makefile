# Set-up-free commands: `make demo`, `make test` and `make lint`. Each creates .venv on first use.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: demo test test-gpu lint bench-cpu bench-gpu clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	@echo "Installing Ember's dependencies into $(VENV) (first run only, about 2 minutes)..."
	@$(VPY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt 2>&1 | grep -v "is ignored: it is neither" || true
	@$(VPY) -m pip install -q --disable-pip-version-check --no-deps -e . 2>&1 | grep -v "is ignored: it is neither" || true
	@$(VPY) -c "import torch, onnx, onnxruntime, ember, ruff, mypy, importlinter" || (echo "dependency install failed"; exit 1)
	@touch $(STAMP)

demo: $(STAMP)
	$(VPY) -m ember.tools.demo

# TensorFlow and Triton both bundle LLVM, and a process that loads both aborts ("LLVM ERROR:
# inconsistency in registered CommandLine options"): the TensorFlow tests run in their own process.
TF_TESTS := tests/frontends/test_tensorflow.py tests/frontends/test_tensorflow_errors.py tests/frontends/test_tensorflow_light.py

test: $(STAMP)
	$(VPY) -m pytest -q -m "not cuda" tests --ignore-glob='tests/frontends/test_tensorflow*.py'
	$(VPY) -m pytest -q -m "not cuda" $(TF_TESTS)

test-gpu: $(STAMP)
	$(VPY) -m pytest -q -m cuda tests --ignore-glob='tests/frontends/test_tensorflow*.py'
	$(VPY) -m pytest -q -m cuda $(TF_TESTS)

# ruff, mypy and import-linter as configured in pyproject.toml; all three run, then the target
# fails if any of them did.
lint: $(STAMP)
	@status=0; \
	echo "==== ruff: style, imports, bugbear (ruff check ember tests bench tools) ===="; \
	$(VPY) -m ruff check --output-format concise ember tests bench tools || status=1; \
	echo "==== mypy: types, strict on ir/ops/plan/passes/builder/frontends/runtime ([tool.mypy]) ===="; \
	$(VPY) -m mypy || status=1; \
	echo "==== import-linter: the layering of DESIGN.md ([tool.importlinter]) ===="; \
	$(VENV)/bin/lint-imports || status=1; \
	exit $$status

bench-cpu: $(STAMP)
	$(VPY) bench/cpu.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
