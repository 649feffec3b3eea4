"""LlamaIndex contract: retriever, node postprocessor, embedding and LLM on a tiny system."""

from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("llama_index.core")

from conftest import abstaining, ticks_while  # noqa: E402
from llama_index.core import VectorStoreIndex  # noqa: E402
from llama_index.core.query_engine import RetrieverQueryEngine  # noqa: E402
from llama_index.core.schema import (  # noqa: E402
    MetadataMode,
    NodeWithScore,
    QueryBundle,
    TextNode,
)
from llama_index.core.storage.docstore import SimpleDocumentStore  # noqa: E402

from invar_rag_integrations.data import Passage  # noqa: E402
from invar_rag_integrations.demo import demo_passages  # noqa: E402
from invar_rag_integrations.generation.abstention import DECLINED_TEXT  # noqa: E402
from invar_rag_integrations.invar import TwoStageRetriever
from invar_rag_integrations.llama_index import (  # noqa: E402
    InvarEmbedding,
    InvarLLM,
    InvarReranker,
    InvarRetriever,
    InvarSynthesizer,
)
from invar_rag_integrations.rag import InvarRAG  # noqa: E402

QUERIES = ["who discovered penicillin", "largest planet in the solar system",
           "deepest lake in the world", "who made the first powered flight",
           "what language is linux written in", "tallest mountain", "capital of france",
           "longest river"]


@pytest.fixture(scope="module")
def core(tiny_rag_system: Path) -> TwoStageRetriever:
    return TwoStageRetriever.from_pretrained(tiny_rag_system, index=None, show_progress=False)


@pytest.fixture(scope="module")
def nodes() -> list[TextNode]:
    return [TextNode(text=p.text, id_=p.id, metadata={"title": p.title}) for p in demo_passages()]


def invar_ranking(core: TwoStageRetriever, nodes: list[TextNode], query: str,
                  k: int = 3) -> list[str]:
    """Node ids by the two-stage Invar search over the text LlamaIndex embeds (content + title
    metadata), with a separately indexed core retriever."""
    own = core.unindexed()
    own.index([Passage(n.node_id, n.get_content(MetadataMode.EMBED)) for n in nodes])
    return own.search([query], k)[0].ids


def reranked(core: TwoStageRetriever, nodes: list[TextNode], query: str, top_n: int) -> list[str]:
    """Node ids by the Invar scorer fused with the coarse cosine, over exactly these nodes."""
    order = core.reranker.rerank(query, [n.get_content(MetadataMode.EMBED) for n in nodes], top_n)
    return [nodes[i].node_id for i, _ in order]


@pytest.fixture(scope="module")
def retriever(core: TwoStageRetriever, nodes: list[TextNode]) -> InvarRetriever:
    return InvarRetriever(core, nodes=nodes, similarity_top_k=3)


def test_retriever_returns_the_core_ranking_as_nodes_with_scores(
        retriever: InvarRetriever, core: TwoStageRetriever, nodes: list[TextNode]) -> None:
    results = retriever.retrieve("who discovered penicillin")
    assert len(results) == 3 and all(isinstance(r, NodeWithScore) for r in results)
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    expected = invar_ranking(core, nodes, "who discovered penicillin")[:3]
    assert [r.node.node_id for r in results] == expected
    by_id = {n.node_id: n for n in nodes}
    assert all(r.node is by_id[r.node.node_id] for r in results)
    assert [r.node.node_id for r in asyncio.run(retriever.aretrieve(
        "who discovered penicillin"))] == expected


def test_retriever_over_a_docstore_and_bad_input(core: TwoStageRetriever,
                                                 nodes: list[TextNode]) -> None:
    docstore = SimpleDocumentStore()
    docstore.add_documents(nodes)
    depth = core.settings.candidates
    retriever = InvarRetriever(core, docstore=docstore, similarity_top_k=depth)
    assert len(retriever.retrieve("capital of france")) == depth
    few = InvarRetriever(core, nodes=nodes[:2], similarity_top_k=depth)  # same core, own index
    assert len(few.retrieve("capital of france")) == 2  # top_k above the corpus: all of it
    assert len(retriever.retrieve("capital of france")) == depth
    with pytest.raises(ValueError, match="larger than the retriever's candidate depth"):
        InvarRetriever(core, nodes=nodes, similarity_top_k=depth + 1)
    with pytest.raises(ValueError, match="empty or whitespace"):
        retriever.retrieve("  ")
    with pytest.raises(ValueError, match="similarity_top_k must be a positive integer"):
        InvarRetriever(core, nodes=nodes, similarity_top_k=0)
    with pytest.raises(ValueError, match="exactly one of nodes or docstore"):
        InvarRetriever(core)
    with pytest.raises(TypeError):
        InvarRetriever(core, nodes=nodes, top_k=3)  # unknown keyword
    for wrapper in (InvarReranker, InvarEmbedding, InvarLLM):  # a path, not a loaded object
        with pytest.raises(TypeError, match=r"must be a loaded [\w ]+ such as .*from_pretrained"):
            wrapper("runs/my_system")
    with pytest.raises(TypeError, match="retriever must be a loaded Retriever such as"):
        InvarRetriever("runs/my_system", nodes=nodes)


def test_reranker_rescores_keeps_previous_scores_and_handles_edge_cases(
        core: TwoStageRetriever, nodes: list[TextNode]) -> None:
    reranker = InvarReranker(core, top_n=2)
    candidates = [NodeWithScore(node=n.model_copy(deep=True), score=1.0 + i) for i, n in
                  enumerate(nodes[:6])]
    kept = reranker.postprocess_nodes(candidates, query_str="who discovered penicillin")
    assert len(kept) == 2 and kept[0].score >= kept[1].score
    assert {k.node.metadata["retrieval_score"] for k in kept} <= {1.0 + i for i in range(6)}
    assert [k.node.node_id for k in kept] == \
        reranked(core, nodes[:6], "who discovered penicillin", 2)
    assert all("retrieval_score" not in k.node.get_content(MetadataMode.EMBED) + k.node.get_content(
        MetadataMode.LLM) for k in kept)
    again = reranker.postprocess_nodes(kept, query_str="who discovered penicillin")
    assert [k.node.node_id for k in again] == [k.node.node_id for k in kept]  # same texts
    assert reranker.postprocess_nodes([], query_str="anything") == []
    with pytest.raises(ValueError, match="needs the query"):
        reranker.postprocess_nodes(candidates)
    with pytest.raises(ValueError, match="top_n must be a positive integer"):
        InvarReranker(core, top_n=0)


def test_embedding_gives_stage1_vectors_and_the_reranker_ranks_the_store_results(
        core: TwoStageRetriever, retriever: InvarRetriever, nodes: list[TextNode]) -> None:
    embedding = InvarEmbedding(core)
    index = VectorStoreIndex(nodes, embed_model=embedding)
    vector = embedding.get_query_embedding("capital of france")
    assert vector == pytest.approx(core.reranker.coarse(["capital of france"])[0].tolist(),
                                   abs=1e-6)
    assert len(vector) == len(embedding.get_text_embedding("Paris is a city."))
    assert asyncio.run(embedding.aget_query_embedding("capital of france")) == pytest.approx(vector)
    with pytest.raises(ValueError, match="non-empty"):
        embedding.get_query_embedding("")
    depth = core.settings.candidates
    engine_retriever = index.as_retriever(similarity_top_k=depth)
    for query in QUERIES[:3]:
        candidates = engine_retriever.retrieve(query)
        kept = InvarReranker(core, top_n=3).postprocess_nodes(candidates, query_str=query)
        assert [k.node.node_id for k in kept] == reranked(
            core, [c.node for c in engine_retriever.retrieve(query)], query, 3)


def test_query_engine_answers_with_the_generator_end_to_end(
        tiny_rag_system: Path, core: TwoStageRetriever, nodes: list[TextNode]) -> None:
    rag = InvarRAG.from_pretrained(tiny_rag_system)
    llm = InvarLLM(rag)
    assert llm.metadata.num_output == rag.settings.max_new_tokens
    template = llm.qa_template()
    prompt = template.format(context_str="[1] (Paris) Paris is the capital.",
                             query_str="capital of france")
    assert prompt.endswith("Question: capital of france\nAnswer:") and "Passages:" in prompt

    engine = RetrieverQueryEngine.from_args(InvarRetriever(core, nodes=nodes,
                                                           similarity_top_k=2),
                                            llm=llm, text_qa_template=template)
    response = engine.query("who discovered penicillin")
    assert len(response.source_nodes) == 2 and isinstance(response.response, str)
    index = VectorStoreIndex(nodes, embed_model=InvarEmbedding(core))
    answer = index.as_query_engine(llm=llm, text_qa_template=template, similarity_top_k=4,
                                   node_postprocessors=[InvarReranker(core, top_n=2)]).query(
        "who discovered penicillin")
    assert len(answer.source_nodes) == 2 and isinstance(answer.response, str)
    assert "".join(r.delta for r in llm.stream_complete(prompt)) == llm.complete(prompt).text
    with pytest.raises(ValueError, match=r"unknown generation arguments \['temperature'\]"):
        llm.complete(prompt, temperature=0.5)
    with pytest.raises(ValueError, match="non-empty"):
        llm.stream_complete(" ")  # checked before the first piece
    with pytest.raises(ValueError, match="the model takes at most"):
        llm.complete("word " * 2000)


def test_query_engine_declines_with_a_flag_in_the_response_metadata(
        tiny_rag_system: Path, core: TwoStageRetriever, nodes: list[TextNode]) -> None:
    rag = InvarRAG.from_pretrained(tiny_rag_system, corpus=demo_passages())
    question = "who discovered penicillin"
    retriever = InvarRetriever(core, nodes=nodes, similarity_top_k=2)
    declining = RetrieverQueryEngine(retriever, response_synthesizer=InvarSynthesizer(
        abstaining(rag, 0.6)))
    response = declining.query(question)
    assert response.response == DECLINED_TEXT and response.metadata["declined"] is True
    assert response.metadata["confidence"] == pytest.approx(0.5)
    assert len(response.source_nodes) == 2
    assert {n.node_id for n in response.source_nodes} <= set(response.metadata)
    answering = RetrieverQueryEngine(retriever, response_synthesizer=InvarSynthesizer(
        abstaining(rag, 0.4, weight=1.0)))
    kept = answering.query(question)
    assert kept.metadata["declined"] is False and kept.response != DECLINED_TEXT
    best = max(n.score for n in kept.source_nodes)
    assert kept.metadata["confidence"] == pytest.approx(1 / (1 + math.exp(-best)))
    assert asyncio.run(answering.aquery(question)).response == kept.response
    assert not InvarSynthesizer(abstaining(rag, 0.6), abstain=False).synthesize(
        question, kept.source_nodes).metadata["declined"]
    with pytest.raises(ValueError, match="no abstention model"):
        InvarSynthesizer(rag, abstain=True)


def test_threads_get_the_serial_results(retriever: InvarRetriever) -> None:
    serial = [[r.node.node_id for r in retriever.retrieve(q)] for q in QUERIES]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda q: [r.node.node_id for r in retriever.retrieve(q)],
                                 QUERIES))
    assert threaded == serial


def test_async_retrieval_does_not_block_the_event_loop(
        retriever: InvarRetriever, monkeypatch: pytest.MonkeyPatch) -> None:
    core = retriever._core
    real = core._search

    def slow(queries, k):
        time.sleep(0.3)
        return real(queries, k)

    monkeypatch.setattr(core, "_search", slow)

    ticks, results = ticks_while([retriever.aretrieve(QueryBundle(q)) for q in QUERIES[:2]])
    assert ticks >= 10 and all(len(r) == 3 for r in results)


def test_a_similarity_cutoff_after_the_reranker_keeps_exactly_the_nodes_at_or_above_it(
        core: TwoStageRetriever, nodes: list[TextNode]) -> None:
    from llama_index.core.postprocessor import SimilarityPostprocessor

    def candidates() -> list[NodeWithScore]:
        return [NodeWithScore(node=n.model_copy(deep=True), score=1.0) for n in nodes[:8]]

    query = "who discovered penicillin"
    ranked = InvarReranker(core, top_n=8).postprocess_nodes(candidates(), query_str=query)
    scores = [n.score for n in ranked]
    assert all(0.0 <= s <= 1.0 for s in scores) and scores == sorted(scores, reverse=True)
    cutoff = float(sorted(scores)[len(scores) // 2])  # a value some nodes reach, others not
    kept = SimilarityPostprocessor(similarity_cutoff=cutoff).postprocess_nodes(ranked)
    expected = [n.node.node_id for n in ranked if n.score >= cutoff]
    assert 0 < len(expected) < len(ranked)
    assert [n.node.node_id for n in kept] == expected
    own = InvarReranker(core, top_n=8, score_threshold=cutoff).postprocess_nodes(
        candidates(), query_str=query)
    assert [n.node.node_id for n in own] == expected
    with pytest.raises(ValueError, match="score_threshold must be a relevance probability"):
        InvarReranker(core, score_threshold=2.0)
