# Two commands do all the set-up: `make test` and `make demo`. Both create .venv if it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The torch build (README "Install"): the default is the registry's build for this platform (CUDA wheels on Linux);
# e.g. TORCH_SPEC="torch==2.5.1 torchvision==0.20.1" TORCH_EXTRA_ARGS="--index-url https://download.pytorch.org/whl/cpu"
# for a CPU-only build, or TORCH_EXTRA_ARGS="--find-links DIR" for local wheels.
TORCH_SPEC ?= "torch>=2.3,<2.14,!=2.13.0+cpu" "torchvision>=0.18,<0.29"
TORCH_EXTRA_ARGS ?=

.PHONY: test demo install clean clean-outputs gpu-kit app

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch and torchvision must be one build. A local CPU-only torch wheel (2.13.0+cpu) that some machines offer
	# through pip's find-links cannot pair with the registry's torchvision, so it is excluded here.
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_EXTRA_ARGS) $(TORCH_SPEC)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	# one process per core (at most 4: several tests start 2-process runs of their own); each uses one thread;
	# an idle worker takes queued tests from a busy one (worksteal), so the long script tests do not end the run alone
	# -rs: a skipped test says why in one line (the browser test without a chromium, say)
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(PY) -m pytest -q -rs -n auto --maxprocesses 4 --dist worksteal

demo: $(STAMP)
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled bash scripts/demo.sh

# the interactive demo on http://127.0.0.1:7860 (tiny random models offline; README "The interactive demo")
app: $(STAMP)
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled GRADIO_ANALYTICS_ENABLED=False $(PY) scripts/app.py $(ARGS)

# the wheels a bare GPU machine lacks for our imports (README "Benchmarks and the GPU kit"), into .gpu-kit/
gpu-kit: $(STAMP)
	$(PY) scripts/gpu_kit.py

# the venv and caches only; training runs and checkpoints in outputs/ stay (make clean-outputs CONFIRM=1)
clean:
	rm -rf $(VENV) .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

clean-outputs:
	@if [ "$(CONFIRM)" != "1" ]; then echo "make clean-outputs deletes outputs/ (every run and checkpoint): run it as 'make clean-outputs CONFIRM=1'"; exit 2; fi
	rm -rf outputs
