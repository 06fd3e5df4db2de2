# FlickrHub — the two commands a new user needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup proto run test test-fast lint fmt bench bench-smoke bench-readme clean

setup: $(STAMP) gen/.stamp  ## create .venv, install, generate gRPC code, install redis-server where missing
	@$(PY) scripts/ensure_redis.py

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) scripts/dev_paths.py
	touch $@

# The folder too: its time changes when a proto is added or removed.
gen/.stamp: $(STAMP) protos/flickrhub/v1 $(wildcard protos/flickrhub/v1/*.proto) scripts/gen_protos.py
	$(PY) scripts/gen_protos.py
	touch $@

proto: $(STAMP)  ## regenerate gen/ from protos/
	$(PY) scripts/gen_protos.py
	touch gen/.stamp

run: setup  ## start Redis, SecantusDB, the Flickr sandbox, the four services and the edge
	$(PY) -m devstack run

test: setup  ## the whole suite with branch coverage (fails below 80%)
	rm -f .coverage .coverage.*
	COVERAGE_PROCESS_START=$(CURDIR)/pyproject.toml $(PY) -m pytest -q -p no:cacheprovider \
	  --cov --cov-config=pyproject.toml --cov-report=term $(PYTEST_ARGS)

test-fast: setup  ## unit tests only, no servers
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

lint: setup  ## ruff + mypy (gen/ is not committed: setup regenerates it whenever protos/ or the tools change)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy services libs tests bench scripts

fmt: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup  ## issue 9's measurements vs same-run baselines; PASS/FAIL per target; bench/results/ (PROFILE=1: flame graphs, STRICT=1: fail on a FAIL)
	$(PY) -m bench $(if $(PROFILE),--profile) $(if $(STRICT),--strict)

bench-smoke: setup  ## every part of `make bench` with tiny numbers into a temporary folder (checks it runs, not the targets)
	$(PY) -m bench --smoke

bench-readme: setup  ## rewrite README's Performance table from bench/results/latest.json
	$(PY) -m bench.report --readme

clean:
	rm -rf $(VENV) gen .data .coverage .coverage.* htmlcov
