"""LangChain: the standard test suites for the retriever and embeddings, the LLM, the RAG chain,
threads and async, on a tiny trained system."""

from __future__ import annotations

import asyncio
import functools
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_tests")

from conftest import abstaining, ticks_while  # noqa: E402
from langchain_core.documents import Document  # noqa: E402
from langchain_core.language_models import FakeListLLM  # noqa: E402
from langchain_tests.integration_tests import (  # noqa: E402
    EmbeddingsIntegrationTests,
    RetrieversIntegrationTests,
)
from langchain_tests.unit_tests import EmbeddingsUnitTests  # noqa: E402

from invar_rag_integrations.demo import demo_passages  # noqa: E402
from invar_rag_integrations.generation.abstention import DECLINED_TEXT  # noqa: E402
from invar_rag_integrations.invar import TwoStageRetriever
from invar_rag_integrations.langchain import (  # noqa: E402
    InvarEmbeddings,
    InvarLLM,
    InvarReranker,
    InvarRetriever,
    build_rag_chain,
)
from invar_rag_integrations.langchain.retriever import document_passage  # noqa: E402
from invar_rag_integrations.rag import InvarRAG  # noqa: E402

QUERIES = ["who discovered penicillin", "largest planet in the solar system",
           "deepest lake in the world", "who made the first powered flight",
           "what language is linux written in", "tallest mountain", "capital of france",
           "longest river"]


@functools.cache
def _rag(system: Path) -> InvarRAG:
    return InvarRAG.from_pretrained(system, corpus=demo_passages())


@functools.cache
def _core(system: Path) -> TwoStageRetriever:
    return TwoStageRetriever.from_pretrained(system, index=None, show_progress=False)


class _WithSystem:
    system: Path

    @pytest.fixture(autouse=True)
    def _system(self, tiny_rag_system: Path) -> None:
        type(self).system = tiny_rag_system


class TestInvarRetrieverStandard(_WithSystem, RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[InvarRetriever]:
        return InvarRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"retriever": _rag(self.system).retriever}

    @property
    def retriever_query_example(self) -> str:
        return "who discovered penicillin"


class _InvarEmbeddingsParams(_WithSystem):
    @property
    def embeddings_class(self) -> type[InvarEmbeddings]:
        return InvarEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"retriever": _core(self.system)}


class TestInvarEmbeddingsUnit(_InvarEmbeddingsParams, EmbeddingsUnitTests):
    pass


class TestInvarEmbeddingsIntegration(_InvarEmbeddingsParams, EmbeddingsIntegrationTests):
    pass


@pytest.fixture(scope="module")
def rag(tiny_rag_system: Path) -> InvarRAG:
    return _rag(tiny_rag_system)


def test_retriever_documents_carry_scores_ids_and_original_metadata(rag: InvarRAG) -> None:
    retriever = InvarRetriever(retriever=rag.retriever, k=3)
    documents = retriever.invoke("who discovered penicillin")
    assert [d.metadata["id"] for d in documents] == \
        [s.passage.id for s in rag.retrieve("who discovered penicillin", 3)]
    assert [d.metadata["score"] for d in documents] == \
        sorted((d.metadata["score"] for d in documents), reverse=True)

    own = [Document(page_content=p.text, metadata={"title": p.title, "source": "mine"}, id=p.id)
           for p in demo_passages()[:10]]
    mine = InvarRetriever.from_documents(own, rag.retriever, k=2).invoke("capital of france")
    assert len(mine) == 2 and all(d.metadata["source"] == "mine" for d in mine)
    assert rag.retriever.passage_ids == [p.id for p in demo_passages()]  # its index is intact
    from_dir = InvarRetriever.from_documents(own, rag.retriever.system_dir, k=2)
    assert [d.id for d in from_dir.invoke("capital of france")] == [d.id for d in mine]

    with pytest.raises(ValueError, match="empty or whitespace"):
        retriever.invoke(" ")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        retriever.invoke("capital of france", k=0)
    with pytest.raises(ValueError, match="larger than the retriever's candidate depth"):
        retriever.invoke("capital of france", k=100)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        InvarRetriever(retriever=rag.retriever, k=-1)
    with pytest.raises(TypeError):
        retriever.invoke("capital of france", top_k=2)
    with pytest.raises(TypeError):
        InvarRetriever(retriever=rag.retriever, search_kwargs={})
    with pytest.raises(TypeError, match=r"retriever must be a loaded TwoStageRetriever such as "
                                        r"TwoStageRetriever.from_pretrained\(system_dir\)"):
        InvarRetriever(retriever="runs/my_system")
    with pytest.raises(TypeError, match="pipeline must be a loaded RAGPipeline"):
        InvarLLM(pipeline="runs/my_system")
    with pytest.raises(TypeError, match="retriever must be a loaded TwoStageRetriever"):
        InvarEmbeddings(retriever="runs/my_system")


def test_compressor_reranks_any_retrievers_documents(rag: InvarRAG) -> None:
    from langchain_core.vectorstores import InMemoryVectorStore

    reranker = InvarReranker(retriever=rag.retriever, top_n=2)
    documents = [Document(page_content=p.text, metadata={"title": p.title}, id=p.id)
                 for p in demo_passages()[:8]]
    kept = reranker.compress_documents(documents, "who discovered penicillin")
    order = rag.retriever.reranker.rerank(
        "who discovered penicillin", [document_passage(d) for d in documents], 2)
    assert [d.id for d in kept] == [documents[i].id for i, _ in order]
    assert [d.metadata["relevance_score"] for d in kept] == pytest.approx([s for _, s in order])
    assert all(0.0 <= d.metadata["relevance_score"] <= 1.0 for d in kept)
    every = reranker.compress_documents(documents, "who discovered penicillin")
    threshold = kept[1].metadata["relevance_score"]
    above = InvarReranker(retriever=rag.retriever, top_n=8, score_threshold=threshold) \
        .compress_documents(documents, "who discovered penicillin")
    assert [d.id for d in above] == [d.id for d in InvarReranker(
        retriever=rag.retriever, top_n=8).compress_documents(documents,
                                                             "who discovered penicillin")
        if d.metadata["relevance_score"] >= threshold]
    assert [d.id for d in above][:2] == [d.id for d in every]
    assert kept[0].metadata["title"] == documents[order[0][0]].metadata["title"]
    assert reranker.compress_documents([], "anything") == []
    with pytest.raises(ValueError, match="non-empty"):
        reranker.compress_documents(documents, " ")
    with pytest.raises(ValueError, match="top_n"):
        InvarReranker(retriever=rag.retriever, top_n=0)
    with pytest.raises(TypeError, match="retriever must be a loaded TwoStageRetriever or "
                                        "Stage2Reranker"):
        InvarReranker(retriever="runs/my_system")

    classic = pytest.importorskip("langchain_classic.retrievers")
    store = InMemoryVectorStore.from_documents(documents, InvarEmbeddings(retriever=rag.retriever))
    compressed = classic.ContextualCompressionRetriever(
        base_retriever=store.as_retriever(search_kwargs={"k": 6}), base_compressor=reranker)
    found = compressed.invoke("who discovered penicillin")
    candidates = store.as_retriever(search_kwargs={"k": 6}).invoke("who discovered penicillin")
    assert [d.id for d in found] == [d.id for d in reranker.compress_documents(
        candidates, "who discovered penicillin")]


def test_llm_invoke_stream_and_bad_arguments(rag: InvarRAG) -> None:
    llm = InvarLLM(pipeline=rag)
    prompt = rag.prompt("who discovered penicillin", rag.retrieve("who discovered penicillin")).text
    text = llm.invoke(prompt)
    assert isinstance(text, str) and text == text.strip() and "\n" not in text
    assert "".join(llm.stream(prompt)) == text
    with pytest.raises(ValueError, match="unknown generation arguments \\['temperature'\\]"):
        llm.invoke(prompt, temperature=0.5)
    with pytest.raises(ValueError, match="non-empty"):
        llm.invoke("")


def test_rag_chain_invoke_batch_stream_and_ainvoke(rag: InvarRAG) -> None:
    chain = build_rag_chain(InvarRetriever(retriever=rag.retriever, k=2), InvarLLM(pipeline=rag))
    result = chain.invoke("who discovered penicillin")
    assert set(result) == {"question", "source_documents", "answer"}
    assert len(result["source_documents"]) == 2
    assert result["answer"] == rag.answer("who discovered penicillin").text
    batch = chain.batch(["who discovered penicillin", "capital of france"])
    assert batch[0] == result and batch[1]["question"] == "capital of france"
    merged: dict = {}
    pieces = 0
    for chunk in chain.stream("who discovered penicillin"):
        for key, value in chunk.items():
            merged[key] = merged.get(key, "") + value if key == "answer" else value
            pieces += key == "answer"
    assert merged == result and pieces >= 1
    assert asyncio.run(chain.ainvoke("who discovered penicillin")) == result
    with pytest.raises(ValueError, match="empty or whitespace"):
        chain.invoke("   ")


def test_rag_chain_declines_with_a_flag_when_abstaining(rag: InvarRAG) -> None:
    question = "who discovered penicillin"
    retriever = InvarRetriever(retriever=rag.retriever, k=2)
    declined = build_rag_chain(retriever, InvarLLM(pipeline=abstaining(rag, 0.6))).invoke(question)
    assert declined["declined"] is True and declined["answer"] == DECLINED_TEXT
    assert declined["confidence"] == pytest.approx(0.5) and len(declined["source_documents"]) == 2
    chain = build_rag_chain(retriever, InvarLLM(pipeline=abstaining(rag, 0.4, weight=1.0)))
    kept = chain.invoke(question)
    assert kept["declined"] is False and kept["answer"] == rag.answer(question).text
    best = max(d.metadata["score"] for d in kept["source_documents"])
    assert kept["confidence"] == pytest.approx(1 / (1 + math.exp(-best)))  # read from metadata
    merged: dict = {}
    for chunk in chain.stream(question):  # the answer is judged whole: one piece
        assert "answer" not in merged
        merged.update(chunk)
    assert merged == kept
    plain = build_rag_chain(retriever, InvarLLM(pipeline=abstaining(rag, 0.6)), abstain=False)
    assert set(plain.invoke(question)) == {"question", "source_documents", "answer"}
    with pytest.raises(ValueError, match="abstaining needs an InvarLLM"):
        build_rag_chain(retriever, FakeListLLM(responses=["x"]), abstain=True)
    with pytest.raises(ValueError, match="no abstention model"):
        build_rag_chain(retriever, InvarLLM(pipeline=rag), abstain=True)


def test_threads_get_the_serial_results(rag: InvarRAG) -> None:
    retriever = InvarRetriever(retriever=rag.retriever, k=3)
    serial = [[d.id for d in retriever.invoke(q)] for q in QUERIES]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda q: [d.id for d in retriever.invoke(q)], QUERIES))
    assert threaded == serial


def test_async_retrieval_does_not_block_the_event_loop(
        rag: InvarRAG, monkeypatch: pytest.MonkeyPatch) -> None:
    retriever = InvarRetriever(retriever=rag.retriever, k=2)
    real = rag.retriever.search

    def slow(queries, k):
        time.sleep(0.3)
        return real(queries, k)

    monkeypatch.setattr(rag.retriever, "search", slow)

    ticks, results = ticks_while([retriever.ainvoke(q) for q in QUERIES[:2]])
    assert ticks >= 10 and all(len(r) == 2 for r in results)
