# Two entry points: `make demo` (the main job) and `make test`. Every target creates or reuses .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: demo test smoke lint typecheck docs test-wheel venv clean

# Small ops run faster on one thread than on two here; override with `make demo THREADS=2`.
THREADS ?= 1
export OMP_NUM_THREADS := $(THREADS)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[higher,torchopt,dev]'
	touch $(STAMP)

# The documentation tools (the `docs` extra) on top of the development install.
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[higher,torchopt,dev,docs]'
	touch $(DOCS_STAMP)

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
	$(BIN)/metaopt popart-regression --seeds 2 --steps 300 --out runs/smoke/fig1a --no-plot --overwrite
	$(BIN)/metaopt maml-rl --preset smoke --out runs/smoke/maml --no-progress --overwrite
	$(BIN)/metaopt verify --checks torchopt-toy,higher-toy
	$(BIN)/python benchmarks/run.py --quick --out runs/smoke/bench
	$(BIN)/metaopt study --quick --out runs/smoke/study
	$(BIN)/metaopt estimator-study --quick --out runs/smoke/estimator_study --overwrite

lint: $(STAMP)
	$(BIN)/ruff check .

# mypy on metaopt/ (configured in pyproject.toml, [tool.mypy]).
typecheck: $(STAMP)
	$(BIN)/mypy

# The documentation site into site/; any warning (broken link, unresolved reference, missing snippet) fails it.
docs: $(DOCS_STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

# Build the sdist and wheel, install the wheel into a fresh venv outside the repository, run the CLI from it.
test-wheel: $(STAMP)
	$(BIN)/python -m pytest -q -m wheel tests/test_wheel.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache site
