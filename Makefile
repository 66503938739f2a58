# Two entry points: `make demo` (install + the quickstart on the embedded digits data) and
# `make test` (install + the CPU test suite). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CUDA build of torch also runs on CPUs; pinned here so a fresh machine gets the tested pair.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: install demo test bench-train clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[all]"
	touch $@

demo: install
	$(BIN)/edgedistill pipeline configs/quickstart.yaml

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench-train: install
	$(BIN)/python benchmarks/distill_step.py

clean:
	rm -rf $(VENV) runs .pytest_cache
