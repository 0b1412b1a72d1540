# Every target sets itself up: .venv is created, and the project installed into it,
# when missing or when pyproject.toml changed.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED ?= $(abspath ../shared)
# pytest-xdist workers for make test (0: one process); each file's tests share one worker
TEST_WORKERS ?= 2
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONDONTWRITEBYTECODE = 1

.PHONY: demo test test-fast test-real lint bench bench-recipes clean pretrain-demo-base

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	@test -d data/demo || $(BIN)/graft demo-data data/demo --classes 5 --per-class 200 --size 64 --seed 0
	@test -d data/demo-holdout || $(BIN)/graft demo-data data/demo-holdout --classes 5 --per-class 1 --size 64 --seed 12345
	$(BIN)/graft run --config configs/demo.yaml
	$(BIN)/python -m graft.serving.demo_query --model-base-path models/demo --model-name demo data/demo-holdout

test: $(STAMP)
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

# the fast loop: everything but the tests that train a model (marked slow)
test-fast: $(STAMP)
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow and not real"

test-real: $(STAMP)
	GRAFT_SHARED=$(SHARED) $(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile -m real -p no:randomly
	$(BIN)/python -m benchmarks.table

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

# head-only, seed, manual and auto on every real dataset in ../shared (about 2 hours on 2 cores)
bench-recipes: $(STAMP)
	GRAFT_SHARED=$(SHARED) $(BIN)/python -m benchmarks.recipes
	$(BIN)/python -m benchmarks.table

pretrain-demo-base: $(STAMP)
	$(BIN)/graft pretrain-demo-base --out graft/assets/demo_base.weights.h5
	$(BIN)/graft pretrain-demo-base --out graft/assets/demo_base_shallow.weights.h5 \
		--cut-at block_6_expand_relu

clean:
	rm -rf runs models data build pipeline.yaml
