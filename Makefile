# regionscribe: `make run` (the backend on the embedded default model) and `make test` (the whole suite).
# Both create the project venv on first use; nothing needs to be installed by hand but Python 3.11.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast e2e train-default eval bench clean-venv

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

# How the embedded default (model/default/) was produced, about 60 min on 2 CPU cores: the two stages, then three
# continuations with relation drills. See README "The embedded default".
RS := $(VENV)/bin/regionscribe train --save-dtype float16 --stage0-steps 0 --stage1-steps 0 --stage2-lr 3e-4 \
	--stage2-steps 300
train-default: $(STAMP)
	$(VENV)/bin/regionscribe train --out runs/default-v1 --seed 0 --stage0-steps 400 --stage1-steps 50 \
		--stage2-steps 2200 --save-dtype float16 --version tiny-default-v1
	$(RS) --init runs/default-v1 --out runs/default-v2 --seed 0 --version tiny-default-v2 \
		--drill horizontal,vertical:400 --drill all:300
	$(RS) --init runs/default-v2 --out runs/default-v3 --seed 1 --version tiny-default-v3 \
		--drill color,overlap:400 --drill all:300 --drill-balance
	$(RS) --init runs/default-v3 --out model/default --seed 2 --version tiny-default-v4 \
		--drill overlap:400 --drill all:300 --drill-balance --eval-scenes 200

eval: $(STAMP)
	$(VENV)/bin/regionscribe eval --json

clean-venv:
	rm -rf $(VENV)
