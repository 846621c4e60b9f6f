# regionscribe: `make run` (the backend on the embedded default model) and `make test` (the whole suite).
# Both create the project venv on first use; nothing needs to be installed by hand but Python 3.11.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast e2e train-default train-baseline eval bench clean-venv

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/regionscribe run

test: $(STAMP)
	$(PY) -m pytest -q -m "not e2e"
	$(MAKE) e2e

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not e2e and not slow"

e2e: $(STAMP)
	$(PY) -m pytest -q -m e2e

# How the embedded default (model/default/) was produced, about 100 min on 2 CPU cores: stage 0 (the tower), GPT4RoI's
# two stages, then five continuations with relation drills. See README "The embedded default".
RS := $(VENV)/bin/regionscribe train --save-dtype float16 --stage0-steps 0 --stage1-steps 0 --stage2-lr 3e-4 \
	--stage2-steps 300
TWO_STAGES := --seed 0 --stage0-steps 0 --stage1-steps 50 --stage2-steps 2200 --save-dtype float16 --eval-scenes 200
train-default: $(STAMP)
	$(VENV)/bin/regionscribe train --out runs/v5-stage0 --seed 0 --stage0-steps 2000 --stage1-steps 0 \
		--stage2-steps 0 --version tiny-default-v5-stage0
	$(VENV)/bin/regionscribe train --init runs/v5-stage0 --out runs/v5-base $(TWO_STAGES) --version tiny-default-v5-base
	$(RS) --init runs/v5-base --out runs/v5-drill1 --seed 0 --version tiny-default-v5-drill1 \
		--drill horizontal,vertical:400 --drill all:300
	$(RS) --init runs/v5-drill1 --out runs/v5-drill2 --seed 1 --version tiny-default-v5-drill2 \
		--drill color,overlap:400 --drill all:300 --drill-balance
	$(RS) --init runs/v5-drill2 --out runs/v5-drill3 --seed 2 --version tiny-default-v5-drill3 \
		--drill overlap:400 --drill all:300 --drill-balance --eval-scenes 200
	$(RS) --init runs/v5-drill3 --out runs/v5 --seed 3 --version tiny-default-v5 \
		--drill color:600 --drill all:300 --drill-balance --eval-scenes 200
	$(RS) --init runs/v5 --out model/default --seed 4 --version tiny-default-v6 \
		--drill color,overlap:600 --drill all:300 --drill-balance --eval-scenes 200

# PVIT's comparison: the same tower and the same two stages with the boxes written as text (needs runs/v5-stage0)
train-baseline: $(STAMP)
	$(VENV)/bin/regionscribe train --init runs/v5-stage0 --coords-as-text --out runs/v5-coords-as-text $(TWO_STAGES) \
		--version tiny-coords-as-text

eval: $(STAMP)
	$(VENV)/bin/regionscribe eval --json

clean-venv:
	rm -rf $(VENV)
