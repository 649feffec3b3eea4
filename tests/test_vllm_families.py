"""The scorer through vLLM's CPU engine against the HF scorer on tiny Llama and Qwen2 models
(head size 64, as vLLM's CPU attention needs) with a retriever LoRA adapter of random
weights: the same scores within 1e-3, in the plain prompt and in the chat form; skipped where
vLLM is not installed."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_families import tiny_family_model

from invar_rag_integrations.demo import demo_passages, demo_questions

pytest.importorskip("vllm", reason="the vllm extra is not installed (make install-vllm)")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def with_retriever_adapter(model: Path, folder: Path) -> tuple[object, object, Path]:
    """The model loaded with a ``retriever`` LoRA adapter on its auto targets, its B matrices
    drawn at random (a fresh adapter is zero), saved under ``folder``."""
    import torch
    from peft import get_peft_model

    from invar_rag_integrations.invar.settings import RETRIEVER_ADAPTER
    from invar_rag_integrations.models import load_base_lm
    from invar_rag_integrations.models.adapters import lora_config
    from invar_rag_integrations.models.lora_targets import AUTO

    lm, tokenizer = load_base_lm(str(model))
    lm = get_peft_model(lm, lora_config(lm, 8, 16, 0.0, [AUTO]), adapter_name=RETRIEVER_ADAPTER)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, weight in lm.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.05)
    lm.eval()
    lm.save_pretrained(str(folder))
    return lm, tokenizer, folder / RETRIEVER_ADAPTER


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_the_vllm_scorer_equals_the_hf_scorer(family: str, tmp_path: Path) -> None:
    from invar_rag_integrations.generation.vllm_backend import VLLMGenerator
    from invar_rag_integrations.invar import InvarScorer
    from invar_rag_integrations.invar.settings import RETRIEVER_ADAPTER, ScorerSettings

    model = tiny_family_model(tmp_path, family, hidden_size=128, intermediate_size=256,
                              num_attention_heads=2, num_key_value_heads=1)
    lm, tokenizer, adapter = with_retriever_adapter(model, tmp_path / "system")
    questions = [q.question for q in demo_questions()[:3]]
    candidates = [demo_passages()[:4]] * len(questions)
    engine = VLLMGenerator(model, {RETRIEVER_ADAPTER: adapter}, max_model_len=1024)
    try:
        for chat in (None, "model"):
            scorer = InvarScorer(lm, tokenizer, ScorerSettings(chat_template=chat),
                                 RETRIEVER_ADAPTER, precision="float32")
            expected = scorer.score_batch(questions, candidates)
            base = InvarScorer(lm, tokenizer, ScorerSettings(chat_template=chat), None,
                               precision="float32").score_batch(questions, candidates)
            assert max(abs(e - b).max() for e, b in zip(expected, base)) > 1e-2  # it adapts
            scorer.use_engine(engine)
            found = scorer.score_batch(questions, candidates)
            assert max(abs(e - f).max() for e, f in zip(expected, found)) < 1e-3
    finally:
        engine.shutdown()
