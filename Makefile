# Two entry points: `make demo` (the main job) and `make test`. Both create or reuse .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test smoke lint venv clean

# Small ops run faster on one thread than on two here; override with `make demo THREADS=2`.
THREADS ?= 1
export OMP_NUM_THREADS := $(THREADS)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[higher,torchopt,dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/metaopt maml-rl --preset demo --out runs/demo
	@echo "plots: runs/demo/returns.png runs/demo/meta_params.png (metrics: runs/demo/metrics.csv)"

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# Tiny-budget runs of every CLI command (the examples run inside the test suite).
smoke: $(STAMP)
	$(BIN)/metaopt --help > /dev/null
	$(BIN)/metaopt popart-regression --seeds 2 --steps 300 --out runs/smoke/fig1a --no-plot
	$(BIN)/metaopt maml-rl --preset smoke --out runs/smoke/maml --no-progress
	$(BIN)/metaopt verify --checks torchopt-toy,higher-toy
	$(BIN)/metaopt bench --quick --out runs/smoke/bench
	$(BIN)/python examples/maml_rl_scaled_study.py --seeds 1 --iterations 2 --tasks 3 --trajectories 3 \
		--eval-trajectories 3 --eval-repeats 1 --out runs/smoke/study

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
