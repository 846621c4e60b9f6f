# regionscribe: `make run` (the backend on the embedded default model) and `make test` (the whole suite).
# Both create the project venv on first use, from the lock file (exact versions and hashes); nothing needs to be
# installed by hand but Python 3.11.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LATEST_VENV ?= .venv-latest
LOCK_VENV ?= .venv-lock
PIP_TOOLS := pip-tools==7.6.2
# Python 3.11's bundled pip (23.2) refuses the lock in hash-checking mode when a dependency asks for an extra
# (jsf wants smart-open[http]>=6.3.0 and 23.2 looks past the pinned smart-open for it): a newer pip, pinned
PIP := pip==25.3
# the lock files carry no index or find-links lines of the machine that compiled them
PIP_COMPILE := CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet --upgrade --generate-hashes \
	--strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links

.PHONY: run test test-fast test-latest e2e lock train-default train-baseline eval bench clean-venv

# requirements-dev.lock: the runtime lock (requirements.lock, what the Dockerfile installs) plus the test tools
$(STAMP): requirements-dev.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(PIP)
	$(PY) -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
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

# The newest versions pyproject.toml allows, in a venv of their own, on the fast suite: a new release of a dependency
# that breaks us shows up here before it reaches the lock. Not part of .ci/run, which must be deterministic.
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet $(PIP)
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[dev]'
	$(LATEST_VENV)/bin/python -m pip list --format freeze > $(LATEST_VENV)/versions.txt
	@grep -iE '^(transformers|torch|accelerate|peft|tokenizers|rq|redis|flask|label-studio-sdk)==' $(LATEST_VENV)/versions.txt
	$(LATEST_VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not e2e and not slow"

# Refresh the locks from pyproject's ranges (and scripts/labelstudio.in): the newest versions allowed, except
# transformers, which is locked at pyproject's lowest supported version so that `make test` covers it (test-latest
# covers the newest).
lock:
	test -x $(LOCK_VENV)/bin/pip-compile || { $(PYTHON) -m venv $(LOCK_VENV) && \
		$(LOCK_VENV)/bin/python -m pip install --quiet $(PIP) $(PIP_TOOLS); }
	$(LOCK_VENV)/bin/python -c 'import re, tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; \
		print(next("transformers==" + re.search(r">=([^,]+)", d).group(1) for d in deps if d.startswith("transformers")))' \
		> $(LOCK_VENV)/floor.txt
	$(PIP_COMPILE) -c $(LOCK_VENV)/floor.txt -o requirements.lock pyproject.toml
	$(PIP_COMPILE) -c $(LOCK_VENV)/floor.txt --extra dev -o requirements-dev.lock pyproject.toml
	$(PIP_COMPILE) -o scripts/labelstudio.lock scripts/labelstudio.in

# How the embedded default (model/default/) was produced, about 235 min on 2 CPU cores: stage 0 (the tower), GPT4RoI's
# two stages, five continuations with relation drills, five with masks, overlapping pairs and loose boxes (v11), then
# four that teach it to read demonstrations: an induction phase, the episodes, two relation repairs (v12).
# See README "The embedded default".
RS := $(VENV)/bin/regionscribe train --save-dtype float16 --stage0-steps 0 --stage1-steps 0 --stage2-lr 3e-4 \
	--stage2-steps 300
TWO_STAGES := --seed 0 --stage0-steps 0 --stage1-steps 50 --stage2-steps 2200 --save-dtype float16 --eval-scenes 200
DEMO := $(VENV)/bin/regionscribe train --stage0-steps 0 --stage1-steps 0 --stage2-steps 0 --mask-share 0.3 \
	--overlap-share 0.2 --loose-share 0.2
REPAIR := --drill all:200 --drill-balance --stage2-steps 300 --stage2-lr 2e-4 --demonstration-steps 300 \
	--demonstration-replay 0.45 --replay-relations 0.5
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
	$(RS) --init runs/v5 --out runs/v6 --seed 4 --version tiny-default-v6 \
		--drill color,overlap:600 --drill all:300 --drill-balance --eval-scenes 200
	$(RS) --init runs/v6 --out runs/v7 --seed 5 --version tiny-default-v7 \
		--drill color,overlap,size:600 --drill all:300 --drill-balance --mask-share 0.5 --overlap-share 0.3
	$(RS) --init runs/v7 --out runs/v8 --seed 6 --version tiny-default-v8 --stage2-steps 400 \
		--drill size,overlap,color:400 --drill all:400 --drill-balance --mask-share 0.6 --overlap-share 0.5
	$(RS) --init runs/v8 --out runs/v9 --seed 7 --version tiny-default-v9 \
		--drill color,overlap,size:600 --drill all:300 --drill-balance --mask-share 0.3 --overlap-share 0.2
	$(RS) --init runs/v9 --out runs/v10 --seed 8 --version tiny-default-v10 --stage2-steps 400 \
		--drill color,overlap:300 --drill all:300 --drill-balance --mask-share 0.3 --overlap-share 0.2 --loose-share 0.4
	$(RS) --init runs/v10 --out runs/v11 --seed 9 --version tiny-default-v11 --stage2-lr 2e-4 --stage2-steps 400 \
		--mask-share 0.3 --overlap-share 0.2 --loose-share 0.2 --eval-scenes 200
	$(DEMO) --init runs/v11 --out runs/ind-keep --seed 7 --induction-steps 700 --induction-replay 8 \
		--replay-relations 0.3
	$(DEMO) --init runs/ind-keep --out runs/v12-episodes --seed 8 --demonstration-steps 2400 \
		--demonstration-replay 0.45 --replay-relations 0.5
	$(DEMO) --init runs/v12-episodes --out runs/v12-repair1 --seed 13 --drill color,overlap:300 $(REPAIR)
	$(DEMO) --init runs/v12-repair1 --out model/default --seed 14 --drill color:300 $(REPAIR) --save-dtype float16 \
		--version tiny-default-v12 --eval-scenes 200

# PVIT's comparison: the same tower and the same two stages with the boxes written as text (needs runs/v5-stage0)
train-baseline: $(STAMP)
	$(VENV)/bin/regionscribe train --init runs/v5-stage0 --coords-as-text --out runs/v5-coords-as-text $(TWO_STAGES) \
		--version tiny-coords-as-text

eval: $(STAMP)
	$(VENV)/bin/regionscribe eval --json

clean-venv:
	rm -rf $(VENV) $(LATEST_VENV) $(LOCK_VENV)
