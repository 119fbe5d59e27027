# whisfusion: `make train` trains the demo model end to end on the CPU; `make test` runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.whisfusion-installed
# Run configuration and data directory for `make train` (DATA=data/demo builds the demo corpus).
CONFIG ?= configs/demo.yaml
DATA ?= data/demo
DEMO_DATA := data/demo
# Extra `key=value` config overrides, e.g. ARGS="trainer.max_steps=100".
ARGS ?=
# Corpus for `make data`: an adapter name and its root directory.
CORPUS ?= demo
CORPUS_DIR ?=
LOGDIR ?= runs
# SLURM job for `make slurm`: nodes and GPUs per node (CONFIG, DATA, ARGS as for `make train`);
# SLURM_ARGS for the scheduler, e.g. "--time 2-00:00:00 --partition gpu"; DRY_RUN=1 prints the script.
NODES ?= 1
GPUS ?= 8
SLURM_ARGS ?=

.PHONY: setup tts espeak test quicktest train data baseline slurm lint tensorboard bench bench-train \
  clean-venv

setup: $(STAMP)

# Re-installs only when a requirements or packaging file changed.
$(STAMP): requirements.txt requirements-dev.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# Debian packages of the demo corpus: speech synthesizers (training, validation and test audio),
# fortune files (real sentences in en, de, es, it, pt, ru) and the human-speech evaluation set
# (Italian and Russian telephone prompts, one speaker each).
TTS_PACKAGES := espeak-ng flite festival festvox-italp16k festvox-itapc16k festvox-ru \
  fortunes fortunes-de fortunes-es fortunes-it fortunes-br fortunes-ru \
  asterisk-core-sounds-it asterisk-core-sounds-it-wav asterisk-core-sounds-ru asterisk-core-sounds-ru-wav

tts:
	@missing=$$(for p in $(TTS_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing" $$missing "(demo corpus, human-speech evaluation set, test audio)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# The former name of `tts`.
espeak: tts

test: setup tts
	$(PY) -m pytest

quicktest: setup
	$(PY) -m pytest -m "not slow"

train: setup tts
ifeq ($(DATA),$(DEMO_DATA))
	$(PY) -m data_prep.prepare demo --out $(DATA) --config $(CONFIG)
endif
	$(VENV)/bin/whisfusion train --config $(CONFIG) data.root=$(DATA) $(ARGS)

data: setup tts
	$(PY) -m data_prep.prepare $(CORPUS) --out $(DATA) --config $(CONFIG) $(if $(CORPUS_DIR),--corpus-dir $(CORPUS_DIR))

slurm: setup
	$(VENV)/bin/whisfusion slurm --nodes $(NODES) --gpus $(GPUS) --config $(CONFIG) --data $(DATA) \
	  $(SLURM_ARGS) $(if $(DRY_RUN),--dry-run) $(ARGS)

lint: setup
	$(VENV)/bin/ruff check whisfusion data_prep tests bench
	$(VENV)/bin/ruff format --check whisfusion data_prep tests bench

tensorboard: setup
	$(VENV)/bin/tensorboard --logdir $(LOGDIR) --bind_all

# Whisper-base's own autoregressive decoding (faster-whisper, CPU) of a split of DATA, scored as
# `whisfusion evaluate` scores a checkpoint, e.g. `make baseline SPLIT=test`.
SPLIT ?= human
baseline: setup
	$(VENV)/bin/whisfusion baseline --data $(DATA) --split $(SPLIT) --output-dir $(LOGDIR)/baseline-$(SPLIT)

# Decoding-speed benchmark, CPU profile (minutes): writes bench/out/, updates bench/RESULTS.md.
bench: setup tts
	$(PY) -m bench.decoding

# Training-throughput benchmark (minutes): step time by part, samples/s, data workers; writes
# bench/out/training-<profile>.{json,md}. PROFILE=gpu times the paper's shapes on a GPU.
PROFILE ?= cpu
bench-train: setup
	$(PY) -m bench.training --profile $(PROFILE)

clean-venv:
	rm -rf $(VENV)
