"""The benchmark's cached stage 2 ranks exactly as the served retriever (tiny models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmarks.retriever_stage import CachedSearch
from invar_rag_integrations.demo import demo_passages
from invar_rag_integrations.invar import InvarScorer, InvarSettings, TwoStageRetriever

QUERIES = ["who discovered penicillin", "highest mountain on earth", "longest river in africa"]


def test_cached_search_equals_the_served_search_with_bm25_and_a_head(
        tiny_lm_dir: Path, tiny_encoder_dir: Path) -> None:
    settings = InvarSettings(candidates=5, bm25_weight=2.0)
    retriever = TwoStageRetriever.zero_shot(str(tiny_lm_dir), str(tiny_encoder_dir), settings,
                                         precision="float32", show_progress=False)
    scorer = retriever.scorer
    settings.head = True
    retriever.reranker.scorer = InvarScorer(scorer.lm, scorer.tokenizer,
                                            settings.scorer_settings(), precision="float32")
    with torch.no_grad():
        retriever.scorer.head.weight.normal_(0, 0.05)
    retriever.index(demo_passages())
    served = retriever.search(QUERIES, 5)
    cached = CachedSearch(retriever).search(QUERIES, 5)
    assert [r.ids for r in cached] == [r.ids for r in served]
    assert np.allclose([r.scores for r in cached], [r.scores for r in served], atol=1e-4)
