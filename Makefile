# Two entry points: `make demo` (install + the quickstart on the embedded digits data) and
# `make test` (install + the CPU test suite). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CUDA build of torch also runs on CPUs; pinned here so a fresh machine gets the tested pair.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: install demo test bench-train ablation ablation-quickstart clean

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

# The README's "Does it work?" CIFAR table: pretrains configs/cifar10_teacher.yaml's teacher
# (skipped when runs/cifar10_teacher holds one), then 4 variants x 3 seeds for the same CPU time,
# with one evidence student for every variant: ViT-T/8 with 4 blocks (16 tokens at 32 px, a
# third of the blocks, so that DINO from scratch gets enough epochs to learn in 4 minutes).
# Unattended and resumable: rerun it after an interruption. About 1.5 hours of a 2-core CPU.
ABLATION_DATA ?= ../shared/data/cifar10-subset
ABLATION_MINUTES ?= 4
ABLATION_SEEDS ?= 0,1,2
ABLATION_ARGS ?=
ablation: install
	$(BIN)/python benchmarks/ablation.py --pretrain-teacher --teacher runs/cifar10_teacher \
		--data $(ABLATION_DATA) --budget-minutes $(ABLATION_MINUTES) --seeds $(ABLATION_SEEDS) \
		--set student.patch_size=8 --set student.depth=4 --out runs/ablation_cifar $(ABLATION_ARGS)

# The README's digits tables: the same on the embedded digits with configs/quickstart.yaml
# (teacher ~2 min, then 6 variants x 3 seeds x 1 min: about 25 minutes of a 2-core CPU;
# QUICK_MINUTES=3 QUICK_VARIANTS=funmatch,dino_scratch,random_head for the longer table).
QUICK_MINUTES ?= 1
QUICK_VARIANTS ?= funmatch,dino_scratch,attndistill,random_head,cls_only,no_mix
ablation-quickstart: install
	$(BIN)/python benchmarks/ablation.py --pretrain-teacher --teacher runs/quickstart_teacher --data digits \
		--config configs/quickstart.yaml --teacher-config configs/quickstart.yaml --budget-minutes $(QUICK_MINUTES) \
		--variants $(QUICK_VARIANTS) --seeds $(ABLATION_SEEDS) --out runs/ablation_digits_$(QUICK_MINUTES)min $(ABLATION_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
