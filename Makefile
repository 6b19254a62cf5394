# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ds3kit-installed

.PHONY: venv demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: it is served from local disk here, and a loose pin would pull a multi-GB build.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) recipes/ds3net.py --out runs/demo-$$(date +%Y%m%d-%H%M%S) $(ARGS)

# Triton kernels run on the CPU through Triton's interpreter.
test: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest tests/ -q $(ARGS)

# Compiled Triton kernels where a GPU is present; the interpreter only on CPU-only machines.
bench: $(STAMP)
	TRITON_INTERPRET=$$($(PY) -c 'import torch; print(0 if torch.cuda.is_available() else 1)') \
		$(PY) -m pytest benchmarks/ --benchmark-only $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
