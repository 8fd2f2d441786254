# make demo: venv + install + pretrain the CPU demo on the TinyStories sample shipped in data/sample/ (or on
# $TINYSTORIES_DIR when set) + print stories + check the loss against bands/demo.json.  make test: the test suite.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
export WANDB_MODE ?= offline

.PHONY: install demo test test-fast lint bench gpu-check clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: runs/demo/finished.json
	$(PY) -m train.generate --run runs/demo --prompt "Once upon a time" --num_samples 3 --max_new_tokens 160
	$(PY) -m train.check --run runs/demo  # the run against the demo's seed band (bands/demo.json)

runs/demo/finished.json: | install  # written last by a finished run: a second `make demo` only samples
	$(PY) -m train --config configs/pretrain/demo.yaml --train.name=demo

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) benchmarks/throughput.py

# The GPU path in one call, inside 9 minutes on one H100 (docs/gpu-check.md); GPU_CHECK_ARGS=--dry-run: CPU, toy sizes.
# Without the venv (the device machine: no network there): make gpu-check PY=python3
gpu-check: $(if $(filter $(VENV)/%,$(PY)),install)
	$(PY) -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf runs .cache lightning_logs wandb
