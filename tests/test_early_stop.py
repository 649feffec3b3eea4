"""Stage 2 reads fewer candidates where the leader is clear: the policy's settings, its two-step
reading, and the retriever that uses it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from invar_rag_integrations.demo import demo_passages
from invar_rag_integrations.invar import InvarSettings, TwoStageRetriever
from invar_rag_integrations.invar.early_stop import leader_is_clear, read_until_clear
from invar_rag_integrations.retrieval.base import top_k


@pytest.mark.parametrize(("settings", "message"), [
    ({"read_first": 0}, r"read_first must be an integer from 1 to the candidate depth \(5\), "
                        r"got 0"),
    ({"candidates": 3, "read_first": 4}, r"depth \(3\), got 4"),
    ({"stop_margin": -0.5}, "stop_margin must be >= 0 .* got -0.5"),
    ({"stop_margin": math.nan}, "stop_margin must be >= 0 .* got nan"),
])
def test_policy_settings_out_of_range_fail_with_the_value(settings, message):
    with pytest.raises(ValueError, match=message):
        InvarSettings(**settings)


def test_the_default_reads_two_first_and_never_more_than_the_depth():
    assert InvarSettings().read_first == 2
    assert InvarSettings(candidates=1).read_first == 1


def test_two_step_reading_stops_where_the_leader_is_clear():
    fused = [np.array([5.0, 1.0, 9.0, 0.0]), np.array([1.0, 0.5, 3.0, 2.0]), np.array([4.0])]
    calls = []

    def score(picked, parts):
        calls.append((picked, [(p.start, p.stop) for p in parts]))
        return [fused[i][part] for i, part in zip(picked, parts)]

    found = read_until_clear([4, 4, 1], 2, 1.0, score)
    assert calls == [([0, 1, 2], [(0, 2), (0, 2), (0, 1)]), ([1], [(2, 4)])]
    assert found[0].tolist() == [5.0, 1.0, -math.inf, -math.inf]  # clear after two: stops
    assert found[1].tolist() == fused[1].tolist()  # 1.0 vs 0.5: not clear, reads the rest
    assert found[2].tolist() == [4.0]
    assert [top_k(list("abcd"), s, 4).ids for s in found[:2]] == [list("abcd"), list("cdab")]
    assert not leader_is_clear(np.array([3.0, 0.0]), math.inf)


def test_candidates_all_without_text_keep_stage_one_order():
    empty = np.full(3, -math.inf, np.float32)
    found = read_until_clear([3], 2, 0.0, lambda picked, parts: [empty[p] for p in parts])
    assert top_k(["a", "b", "c"], found[0], 3).ids == ["a", "b", "c"]


@pytest.fixture()
def retriever(tiny_lm_dir: Path, tiny_encoder_dir: Path):
    def build(**settings) -> TwoStageRetriever:
        found = TwoStageRetriever.zero_shot(str(tiny_lm_dir), str(tiny_encoder_dir),
                                            InvarSettings(candidates=5, **settings),
                                         precision="float32", show_progress=False)
        found.index(demo_passages())
        return found

    return build


def test_the_retriever_reads_as_the_policy_says_and_counts_the_pairs(retriever):
    queries = ["who discovered penicillin", "what is the capital of france"]
    fixed = retriever(read_first=5)
    always_stop = retriever(read_first=2, stop_margin=0.0)
    full = fixed.search(queries, 5)
    short = always_stop.search(queries, 5)
    assert fixed.scorer.window_counts["nodes"] == 10
    assert always_stop.scorer.window_counts["nodes"] == 4  # two per query
    proposed = always_stop.candidates(queries)
    for result, stage1, complete in zip(short, proposed, full):
        assert set(result.ids[:2]) == set(stage1.ids[:2])  # read first, then the rest
        assert result.scores[:2] == sorted(result.scores[:2], reverse=True)
        assert result.scores[2:] == sorted(result.scores[2:], reverse=True)
        assert all(0.0 < p < 1.0 for p in result.scores)  # unread ones get a probability too
        read = dict(zip(complete.ids, complete.scores))  # the read model, every one read
        assert result.scores[:2] == pytest.approx([read[i] for i in result.ids[:2]], abs=1e-4)
        assert result.scores[2:] != pytest.approx([read[i] for i in result.ids[2:]], abs=1e-4)
    never_stop = retriever(read_first=2, stop_margin=math.inf)
    assert [r.ids for r in never_stop.search(queries, 5)] == [r.ids for r in full]
    assert never_stop.scorer.window_counts["nodes"] == 10


def test_the_rerankers_read_as_the_policy_says_and_by_default_read_every_node(retriever):
    from invar_rag_integrations.rerank_service import ServiceSettings
    from invar_rag_integrations.rerank_service.handler import RerankHandler

    core = retriever().reranker
    query, texts = "who discovered penicillin", [p.full_text() for p in demo_passages()[:6]]
    full = core.rerank(query, texts)
    assert core.scorer.window_counts["nodes"] == 6
    short = core.rerank(query, texts, 3, read_first=2, stop_margin=0.0)
    assert core.scorer.window_counts["nodes"] == 8  # two more
    assert {i for i, _ in short[:2]} == {0, 1} and short[2][0] in range(2, 6)  # read first
    assert all(0.0 < p < 1.0 for _, p in short)
    scores = dict(full)
    assert [s for _, s in short[:2]] == pytest.approx([scores[i] for i, _ in short[:2]],
                                                      abs=1e-4)
    never = core.rerank(query, texts, read_first=2, stop_margin=math.inf)
    assert [i for i, _ in never] == [i for i, _ in full]
    assert [s for _, s in never] == pytest.approx([s for _, s in full], abs=1e-4)
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from invar_rag_integrations.llama_index import InvarReranker

    nodes = [NodeWithScore(node=TextNode(text=t), score=1.0) for t in texts]
    kept = InvarReranker(core, top_n=3, read_first=2, stop_margin=0.0).postprocess_nodes(
        nodes, QueryBundle(query))
    assert [k.node.text for k in kept] == [texts[i] for i, _ in short]
    assert [k.score for k in kept] == pytest.approx([p for _, p in short])
    handler = RerankHandler(core, ServiceSettings(read_first=2, stop_margin=0.0))
    (ranked, tokens, pairs), = handler.score([query], [texts], [4])
    handler.batcher.close()
    assert len(ranked) == 4 and {i for i, _, _ in ranked[:2]} == {0, 1} and pairs == 2
    assert [s for _, _, s in ranked[2:]] == [-math.inf, -math.inf]  # their fused scores
    assert tokens == core.scorer.tokens_read(query, texts[:2]) + core.scorer.prior([query])[1][0]


@pytest.mark.parametrize("build", ["llama_index", "langchain", "service", "core"])
def test_reranker_policy_settings_out_of_range_fail_at_construction(retriever, build):
    core = retriever().reranker
    with pytest.raises(ValueError, match="read_first must be an integer from 1, got -1"):
        if build == "llama_index":
            from invar_rag_integrations.llama_index import InvarReranker
            InvarReranker(core, read_first=-1)
        elif build == "langchain":
            from invar_rag_integrations.langchain import InvarReranker
            InvarReranker(retriever=core, read_first=-1)
        elif build == "service":
            from invar_rag_integrations.rerank_service import ServiceSettings
            ServiceSettings(read_first=-1)
        else:
            core.rerank("a question", ["a text"], read_first=-1)
