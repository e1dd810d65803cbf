# earthrep: `make demo` runs the whole pipeline on the built-in demo region; `make test` runs the tests.
# Both create .venv (Python 3.11, see BUILD.md for why) and install the package on first use.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.earthrep-installed
DEMO ?= demo
RUNS ?= $(DEMO)/runs
SEED ?= 0
PYTEST_ARGS ?=
TEST_WORKERS ?= 2

.PHONY: demo test install clean-demo

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; assert v == (3, 11), f"earthrep pins Python 3.11 (jax 0.10.x); found {sys.version.split()[0]} at {sys.executable}. Set PYTHON=/path/to/python3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS) tests

# ---------------------------------------------------------------- the demo pipeline
$(DEMO)/sites.csv: | $(STAMP)
	$(BIN)/python -m data_prep.demo_world --out $(DEMO) --seed $(SEED)

# The demo has 6 cubes: its patches are cut at denser strides than the reference's (9 px / 17 dates for
# S2, 15 px / 40 acquisitions for S1) so that stage 1 sees a few thousand of them. S2 is cut at 3 px:
# 2.9x the distinct centre pixels of 5 px, which lowers the held-out test cube's error at the same number
# of steps (benchmarks/results/s2_recipe.md); the fused shards keep 5 px (same steps, a smaller validation).
S2_SHARD_ARGS ?= --spatial-stride 3 --time-stride 10
FUSED_SHARD_ARGS ?= --spatial-stride 5 --time-stride 10
S1_SHARD_ARGS ?= --spatial-stride 5 --time-stride 20
SHARD_ARGS_s1 = $(S1_SHARD_ARGS)
SHARD_ARGS_s2 = $(S2_SHARD_ARGS)
SHARD_ARGS_fused = $(FUSED_SHARD_ARGS)

$(DEMO)/shards/%/metadata.json: $(DEMO)/sites.csv
	$(BIN)/python -m data_prep.build_shards --cubes $(DEMO)/cubes --out $(DEMO)/shards/$* --modality $* \
	    $(SHARD_ARGS_$*) --overwrite

demo: $(STAMP) $(DEMO)/shards/s1/metadata.json $(DEMO)/shards/s2/metadata.json $(DEMO)/shards/fused/metadata.json
	$(BIN)/python -m earthrep.train --config experiments/s1_ae.py:runlocal --workdir $(RUNS)/s1_ae \
	    --config.data_dir=$(DEMO)/shards/s1
	$(BIN)/python -m earthrep.train --config experiments/s2_ae.py:runlocal --workdir $(RUNS)/s2_ae \
	    --config.data_dir=$(DEMO)/shards/s2
	$(BIN)/python -m earthrep.train --config experiments/fusion.py:runlocal --workdir $(RUNS)/fusion \
	    --config.s1_workdir=$(RUNS)/s1_ae --config.s2_workdir=$(RUNS)/s2_ae --config.data_dir=$(DEMO)/shards/fused
	$(BIN)/python -m benchmarks.noise_floor --world $(DEMO) --shards $(DEMO)/shards/s2 --out $(DEMO)/training/floors.json
	$(BIN)/python -m earthrep.summarize --run s1_ae=$(RUNS)/s1_ae --run s2_ae=$(RUNS)/s2_ae --run fusion=$(RUNS)/fusion \
	    --out $(DEMO)/training --floors $(DEMO)/training/floors.json
	for cube in $(DEMO)/cubes/*/; do site=$$(basename $$cube); \
	  $(BIN)/python -m earthrep.embed --model $(RUNS)/fusion --cube $$cube \
	      --out $(DEMO)/features/fused/$$site.zarr --quicklook auto --resume || exit 1; done
	test -f $(DEMO)/towers/sites.csv || $(BIN)/python -m data_prep.demo_world --out $(DEMO)/towers \
	    --seed $$(($(SEED) + 1)) --sites 20 --size 48 && \
	$(BIN)/python -m earthrep.evaluate --world $(DEMO)/towers --model $(RUNS)/fusion --out $(DEMO)/gpp --overwrite
	@echo "demo: models in $(RUNS), feature cubes and quick-looks in $(DEMO)/features/fused, GPP report $(DEMO)/gpp/report.md"

clean-demo:
	rm -rf $(DEMO)
