# Two entry points: `make demo` (the main job) and `make test`. Every target creates or reuses .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs
CHECK_STAMP := $(VENV)/.installed-docs-check
# MathJax and iframe-worker from the npm registry, pinned by docs-assets/package-lock.json (docs/_hooks.py copies
# them into the site so that it works from disk, offline).
DOCS_ASSETS := docs-assets/node_modules/.package-lock.json

.PHONY: demo test smoke lint typecheck docs docs-check test-wheel venv clean

# Small ops run faster on one thread than on two here; override with `make demo THREADS=2`.
THREADS ?= 1
export OMP_NUM_THREADS := $(THREADS)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip uninstall --quiet -y metaopt 2>/dev/null || true  # the distribution's name before 0.2.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[higher,torchopt,dev]'
	touch $(STAMP)

# The documentation tools (the `docs` extra) on top of the development install.
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[higher,torchopt,dev,docs]'
	touch $(DOCS_STAMP)

# Playwright (no browser download) and Debian's chromium, for the headless check of the built site.
$(CHECK_STAMP): $(DOCS_STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[higher,torchopt,dev,docs,docs-check]'
	test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	touch $(CHECK_STAMP)

$(DOCS_ASSETS): docs-assets/package.json docs-assets/package-lock.json
	npm ci --prefix docs-assets --no-audit --no-fund --ignore-scripts --loglevel=error
	touch $(DOCS_ASSETS)

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
	$(BIN)/metaopt maml-rl --preset smoke --env pointnav2d --scaled --horizon 10 --out runs/smoke/pointnav --no-progress --overwrite
	$(BIN)/metaopt popart-regression --seeds 2 --steps 100 --methods popart --learn beta,lr --out runs/smoke/online --no-plot --overwrite
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
# Open site/index.html from disk: it needs no server and no network.
docs: $(DOCS_STAMP) $(DOCS_ASSETS)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# The built site in headless chromium from file:// with the network cut: navigation, search, every formula,
# tables, the API reference's names (docs/check_site.py); screenshots into site-check/.
docs-check: docs $(CHECK_STAMP)
	$(BIN)/python docs/check_site.py --site site --shots site-check

# Build the sdist and wheel, install the wheel into a fresh venv outside the repository, run the CLI from it.
test-wheel: $(STAMP)
	$(BIN)/python -m pytest -q -m wheel tests/test_wheel.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache site site-check docs-assets/node_modules
