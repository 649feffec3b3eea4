"""Pieces of the generation stage that need no trained system: cached search, sampling and
adapter switching on one shared model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from invar_rag_integrations.data import Question
from invar_rag_integrations.demo import demo_passages
from invar_rag_integrations.evaluation.qa_eval import sample_per_dataset
from invar_rag_integrations.models.adapters import use_adapter
from invar_rag_integrations.retrieval import BM25Retriever
from invar_rag_integrations.retrieval.search_cache import cached_search


class CountingBM25(BM25Retriever):
    def __init__(self) -> None:
        super().__init__()
        self.searched: list[str] = []

    def _search(self, queries, k):
        self.searched += queries
        return super()._search(queries, k)


def test_cached_search_retrieves_each_query_once_and_survives_a_cut_line(tmp_path: Path) -> None:
    retriever = CountingBM25()
    retriever.index(demo_passages())
    queries = ["who discovered penicillin", "largest planet", "who discovered penicillin"]
    first = cached_search(retriever, queries, 3, tmp_path, show_progress=False)
    assert sorted(retriever.searched) == ["largest planet", "who discovered penicillin"]
    assert first == retriever.search(queries, 3)
    retriever.searched.clear()

    [file] = tmp_path.glob("search-bm25-*-k3.jsonl")
    lines = file.read_text().splitlines()
    file.write_text(lines[0] + "\n" + lines[1][:20])  # a kill in the middle of a line
    retriever.searched.clear()
    again = cached_search(retriever, queries + ["tallest mountain"], 3, tmp_path,
                          show_progress=False)
    assert again[:3] == first and len(retriever.searched) == 2
    assert all(json.loads(line) for line in file.read_text().splitlines()[2:])
    assert not list(tmp_path.glob("*-k5.jsonl"))  # k is part of the key
    cached_search(retriever, queries, 5, tmp_path, show_progress=False)
    assert list(tmp_path.glob("*-k5.jsonl"))


def test_sample_per_dataset_is_seeded_and_independent_of_order() -> None:
    questions = [Question(f"{d}-{i}", f"q{i}", ("a",), d) for d in ("nq", "popqa") for i in
                 range(10)]
    sample = sample_per_dataset(questions, 4, seed=1)
    assert [q.dataset for q in sample].count("nq") == 4 and len(sample) == 8
    assert {q.id for q in sample_per_dataset(questions[::-1], 4, seed=1)} == {q.id for q in sample}
    assert {q.id for q in sample_per_dataset(questions, 4, seed=2)} != {q.id for q in sample}
    assert sample_per_dataset(questions, None) == questions
    with pytest.raises(ValueError, match="positive"):
        sample_per_dataset(questions, 0)


def test_adapter_switching_keeps_trainable_flags_and_restores_the_active_adapter(
        tiny_lm_dir: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    config = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    lm = get_peft_model(lm, config, adapter_name="retriever")
    lm.add_adapter("generator", LoraConfig(r=2, target_modules=["q_proj"],
                                           init_lora_weights=False))
    flags = {n: p.requires_grad for n, p in lm.named_parameters()}
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        outputs = {}
        for name in ("generator", None, "retriever"):
            with use_adapter(lm, name):
                outputs[name] = lm(input_ids=ids).logits
            assert lm.active_adapter == "retriever"
        plain = lm.get_base_model()
    assert not torch.allclose(outputs["generator"], outputs["retriever"])
    assert not torch.allclose(outputs[None], outputs["retriever"])
    assert {n: p.requires_grad for n, p in lm.named_parameters()} == flags
    with pytest.raises(ValueError, match=r"unknown adapter 'nope'; loaded: \['generator', "
                                         r"'retriever'\]"):
        with use_adapter(lm, "nope"):
            pass
    with pytest.raises(ValueError, match="has no adapters"):
        with use_adapter(plain.__class__.from_pretrained(tiny_lm_dir), "generator"):
            pass


def test_completion_of_formatted_prompts_streams_the_stripped_text_and_checks_length(
        tiny_lm_dir: Path) -> None:
    from invar_rag_integrations.generation import HFGenerator
    from invar_rag_integrations.generation.artifacts import GeneratorSettings
    from invar_rag_integrations.models import load_base_lm
    from invar_rag_integrations.rag import RAGPipeline

    pipeline = RAGPipeline(HFGenerator(*load_base_lm(str(tiny_lm_dir))),
                           settings=GeneratorSettings(max_new_tokens=12))
    for prompt in ("the planet", "  a river of"):
        for stop in ([], ["e"]):
            text = pipeline.complete(prompt, stop)
            assert text == text.strip()
            assert "".join(pipeline.stream_completion(prompt, stop)) == text
            assert not stop or "e" not in text
    assert pipeline.context_window == 1024
    with pytest.raises(ValueError, match=r"the model takes at most 1012 \(1024 minus 12"):
        pipeline.complete("word " * 1100)
    with pytest.raises(ValueError, match="non-empty"):
        pipeline.complete(" ")
