# Two set-up-free commands: `make demo` and `make test`. Each creates .venv on first use.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: demo test test-gpu bench-cpu bench-gpu clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	@echo "Installing Ember's dependencies into $(VENV) (first run only, about 2 minutes)..."
	@$(VPY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt 2>&1 | grep -v "is ignored: it is neither" || true
	@$(VPY) -m pip install -q --disable-pip-version-check --no-deps -e . 2>&1 | grep -v "is ignored: it is neither" || true
	@$(VPY) -c "import torch, onnx, onnxruntime, ember" || (echo "dependency install failed"; exit 1)
	@touch $(STAMP)

demo: $(STAMP)
	$(VPY) -m ember.tools.demo

test: $(STAMP)
	$(VPY) -m pytest -q -m "not cuda" tests

test-gpu: $(STAMP)
	$(VPY) -m pytest -q -m cuda tests

bench-cpu: $(STAMP)
	$(VPY) bench/cpu.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
