# skintumor: every target sets itself up on a fresh machine (creates .venv and installs).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=
FOLDS  ?= 0,1,2,3,4
NAME   ?= cv
SEARCH_ARGS ?=
ESTIMATE_SEED ?= 1000
TRAIN_ARGS  ?=

.PHONY: help install train cv search paper estimate difficulty sync test test-slow test-e2e test-cov lint format docs docs-serve clean

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(PY) -m pip install -q -e '.[dev]' 2>&1 | grep -v "is ignored" || true
	@$(PY) -c "import skintumor, torch, lightning, hydra" && touch $(STAMP)

install: $(STAMP)  ## create .venv and install the project (done by every target when needed)

train: $(STAMP)  ## train on the embedded phantom (extra Hydra overrides: make train ARGS="model=resnet18")
	$(PY) -m skintumor.train $(ARGS)

cv: $(STAMP)  ## cross-validation over FOLDS + report in outputs/cv/NAME_<time> (make cv NAME=resnet ARGS="model=resnet18")
	@name=$(NAME)_$$(date +%Y-%m-%d_%H-%M-%S); dir=outputs/cv/$$name; \
	$(PY) -m skintumor.train -m data.fold=$(FOLDS) sweep_name=$$name hydra.sweep.dir=$$dir $(ARGS); status=$$?; \
	test -f $$dir/report.md || test -f $$dir/ensemble/report.md || $(PY) -m skintumor.report $$dir; \
	echo "sweep directory: $$dir"; exit $$status

paper: $(STAMP)  ## the study's protocol: policy search per outer fold, then CV with those policies + report (ARGS to both, SEARCH_ARGS/TRAIN_ARGS to one)
	@name=paper_$$(date +%Y-%m-%d_%H-%M-%S); dir=outputs/paper/$$name; \
	$(PY) -m skintumor.search -m experiment=paper data.fold=$(FOLDS) hydra.sweep.dir=$$dir/search $(ARGS) $(SEARCH_ARGS) && \
	$(PY) -m skintumor.train -m experiment=paper data.fold=$(FOLDS) augment=policy \
	  "augment.path=$$dir/search/fold_\$${data.fold}/policy_fold\$${data.fold}.json" \
	  sweep_name=$$name hydra.sweep.dir=$$dir $(ARGS) $(TRAIN_ARGS); status=$$?; \
	test -f $$dir/report.md || $(PY) -m skintumor.report $$dir; \
	echo "sweep directory: $$dir"; exit $$status

sync: $(STAMP)  ## upload a sweep's offline W&B runs, training runs first (make sync SWEEP=outputs/cv/<name>)
	@test -n "$(SWEEP)" || { echo "usage: make sync SWEEP=<sweep or run directory>"; exit 2; }
	$(PY) -m skintumor.dashboard $(SWEEP)

estimate: $(STAMP)  ## headline BUSI estimate on a partition seed unused in development: paper + recipe, 5 folds, compared (resumable)
	@dir=outputs/estimate/busi_seed$(ESTIMATE_SEED); \
	for exp in paper recipe; do \
	  $(PY) -m skintumor.train -m experiment=$$exp data=busi data.seed=$(ESTIMATE_SEED) data.fold=$(FOLDS) \
	    sweep_name=estimate_$${exp}_seed$(ESTIMATE_SEED) hydra.sweep.dir=$$dir/$$exp $(ARGS) || exit $$?; \
	done; \
	$(PY) -m skintumor.report $$dir/recipe $$dir/paper --out $$dir/recipe_vs_paper

difficulty: $(STAMP)  ## is the phantom still hard? histogram baseline, then paper (at 128 px) and recipe, 5 folds each, compared (resumable)
	$(PY) -m benchmarks.phantom_difficulty --morphology
	@dir=outputs/difficulty/phantom; \
	for exp in paper recipe; do \
	  $(PY) -m skintumor.train -m experiment=$$exp data.image_size=128 data.fold=$(FOLDS) \
	    sweep_name=difficulty_$$exp hydra.sweep.dir=$$dir/$$exp $(ARGS) || exit $$?; \
	done; \
	$(PY) -m skintumor.report $$dir/recipe $$dir/paper --out $$dir/recipe_vs_paper

search: $(STAMP)  ## learn an augmentation policy for one outer fold (make search ARGS="data.fold=1")
	$(PY) -m skintumor.search $(ARGS)

test: $(STAMP)  ## the default test suite (under 5 minutes on 2 CPU cores; the 25 slowest tests listed)
	$(PY) -m pytest -q --durations=25 $(ARGS)

test-slow: $(STAMP)  ## only the slow tests (real data, more training, several processes)
	$(PY) -m pytest -q -m slow $(ARGS)

test-e2e:  ## the web page and report.html in headless Chromium (installs nothing: needs make install and /usr/bin/chromium, docs/serve.md)
	$(PY) -m pytest -q -m e2e $(ARGS)

test-cov: $(STAMP)  ## the default suite with a coverage report of skintumor/
	$(PY) -m pytest -q --cov --cov-report=term $(ARGS)

lint: $(STAMP)  ## ruff: lint and format check (make format fixes what it can)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)  ## ruff: sort imports, fix what is safe, format
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

docs: $(STAMP)  ## build the documentation site into site/ (mkdocs --strict: a broken link or a warning fails)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

docs-serve: $(STAMP)  ## the documentation site at http://127.0.0.1:8001/, rebuilt on every edit (ARGS to mkdocs serve)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve --dev-addr 127.0.0.1:8001 $(ARGS)

clean:  ## remove caches and the venv (outputs/ is kept: it holds your runs)
	rm -rf $(VENV) .pytest_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
