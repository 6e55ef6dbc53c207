# Two commands do all the set-up: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled
export AWS_EC2_METADATA_DISABLED := true

.PHONY: venv demo test test-fast bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]' 'torch==2.13.0'
	touch $(STAMP)

# The digits benchmark: suite + pre-trained base written to ./.cl_store if absent (reused after),
# then mode, seq_lora and moe_lora through the five tasks; prints the table and the report's path.
DEMO_ARGS ?= --suite digits --methods mode,seq_lora,moe_lora
demo: $(STAMP)
	$(PY) jobs/sequence.py $(DEMO_ARGS) --run demo-$(shell date +%Y%m%d-%H%M%S)

# Two pytest-xdist workers, one queue of tests, the slow ones first (tests/conftest.py); tests
# marked xdist_group("name") run on one worker. `make test XDIST=` runs the suite in one process.
XDIST ?= -n 2 --dist loadgroup
# The tests that start a local Ray head or S3 server (marker local_infra: default dashboard port,
# ray job submit) run after, in one process: beside another worker's Ray their ports collide.
test: $(STAMP)
	$(PY) -m pytest -q $(XDIST) -m "not local_infra"
	$(PY) -m pytest -q -m local_infra

test-fast: $(STAMP)
	$(PY) -m pytest -q $(XDIST) -m "not slow and not local_infra"
	$(PY) -m pytest -q -m "local_infra and not slow"

bench: $(STAMP)
	$(PY) benchmarks/mode_layer.py

clean:
	rm -rf .cl_store .pytest_cache

include infra/local/ray.mk
include infra/local/s3.mk
include sweeps/sweeps.mk
