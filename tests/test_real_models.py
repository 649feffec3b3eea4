"""Tests on the real embedded models (MiniLM, SmolLM2), offline; they run in CI."""

from __future__ import annotations

import random

import pytest

from invar_rag_integrations.demo import demo_passages, demo_questions
from invar_rag_integrations.evaluation import evaluate_retrieval, odqa_corpus, odqa_questions
from invar_rag_integrations.models import load_coarse_encoder, resolve_base_model
from invar_rag_integrations.paths import data_dir
from invar_rag_integrations.retrieval import BM25Retriever, DenseRetriever

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def minilm():
    return load_coarse_encoder("minilm")


@pytest.fixture(scope="module")
def shared_data():
    try:
        return data_dir()
    except FileNotFoundError as err:
        pytest.skip(f"ODQA data not available: {err}")


def _metric(rows, dataset, metric):
    return next(r["value"] for r in rows if r["dataset"] == dataset and r["metric"] == metric)


def test_minilm_loads_offline_and_retrieves_demo_gold_passages(minilm):
    assert minilm.get_embedding_dimension() == 384
    retriever = DenseRetriever(minilm, show_progress=False)
    retriever.index(demo_passages())
    questions = demo_questions()
    results = retriever.search([q.question for q in questions], k=1)
    assert sum(r.ids[0] in q.gold_passage_ids for q, r in zip(questions, results)) >= 9


def test_zero_shot_scorer_ranks_the_answer_passage_first_and_bf16_ranks_like_float32():
    from invar_rag_integrations.invar import TwoStageRetriever
    from invar_rag_integrations.invar.precision import cpu_has_fast_bf16
    from invar_rag_integrations.invar.scorer import InvarScorer

    retriever = TwoStageRetriever.zero_shot(precision="float32", show_progress=False)
    passages = {p.id: p for p in demo_passages()}
    hits = 0
    for question in demo_questions():
        gold = passages[question.gold_passage_ids[0]]
        others = [p for p in passages.values() if p.id not in question.gold_passage_ids][:3]
        scores = retriever.scorer.score(question.question, [gold, *others])
        hits += int(scores.argmax() == 0)
    assert hits >= 8  # of 10: the passage holding the answer reads as the likeliest source
    if cpu_has_fast_bf16():  # where bf16 is the automatic choice, it must rank the same
        scorer = retriever.scorer
        bf16 = InvarScorer(scorer.lm, scorer.tokenizer, scorer.settings, precision="bfloat16")
        question = demo_questions()[0]
        candidates = list(passages.values())[:10]
        assert (bf16.score(question.question, candidates).argsort()[-3:]
                == scorer.score(question.question, candidates).argsort()[-3:]).all()


def test_smollm2_converts_once_and_the_demo_runs_the_shipped_system(capsys):
    from invar_rag_integrations.demo.run import run_demo

    source = resolve_base_model("smollm2")
    assert (source.path / "config.json").is_file() and (source.path / "model.safetensors").is_file()
    assert source.identity.startswith("smollm2:sha256:")
    assert resolve_base_model("HuggingFaceTB/SmolLM2-135M-Instruct").path == source.path
    scores = run_demo()
    out = capsys.readouterr().out
    assert out.count("source ") == 40 and out.count("exact match") == 2  # 10 x 2 systems x k=2
    assert scores["invar-rag"] >= 0.5 and scores["invar-rag"] >= scores["minilm+base"]


def test_shipped_system_answers_with_sources_streams_and_cuts_long_questions():
    from invar_rag_integrations.demo import SHIPPED_SYSTEM
    from invar_rag_integrations.rag import InvarRAG

    size = sum(f.stat().st_size for f in SHIPPED_SYSTEM.rglob("*") if f.is_file())
    assert size <= 15 * 2**20
    rag = InvarRAG.from_pretrained(SHIPPED_SYSTEM, corpus=demo_passages())
    assert rag.generator.model is rag.retriever.scorer.lm  # one base model, two adapters
    python = demo_questions()[3]  # one the shipped system answers (make demo: 7/10)
    answer = rag.answer(python.question)
    assert answer.text in python.answers
    assert answer.sources[0].passage.id in python.gold_passage_ids
    assert "".join(rag.stream(python.question)) == answer.text
    with pytest.warns(UserWarning, match="query text.* truncated"):  # by the retriever
        with pytest.warns(UserWarning, match="exceeded 512 tokens"):  # and in the prompt
            long = rag.answer("Please answer carefully. " * 200 + python.question)
    assert "question cut to its last" in long.truncation


def test_shipped_system_answers_through_both_frameworks():
    pytest.importorskip("llama_index.core")
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.schema import TextNode

    from invar_rag_integrations import langchain as lc
    from invar_rag_integrations import llama_index as li
    from invar_rag_integrations.demo import SHIPPED_SYSTEM
    from invar_rag_integrations.rag import InvarRAG

    python = demo_questions()[3]
    rag = InvarRAG.from_pretrained(SHIPPED_SYSTEM)
    documents = [Document(page_content=p.text, metadata={"title": p.title}, id=p.id)
                 for p in demo_passages()]
    chain = lc.build_rag_chain(lc.InvarRetriever.from_documents(documents, rag.retriever, k=2),
                               lc.InvarLLM(pipeline=rag))
    result = chain.invoke(python.question)
    assert result["answer"] in python.answers
    assert result["source_documents"][0].id in python.gold_passage_ids

    nodes = [TextNode(text=p.text, id_=p.id, metadata={"title": p.title})
             for p in demo_passages()]
    llm = li.InvarLLM(rag)
    engine = RetrieverQueryEngine.from_args(
        li.InvarRetriever(rag.retriever, nodes=nodes, similarity_top_k=2), llm=llm,
        text_qa_template=llm.qa_template())
    response = engine.query(python.question)
    assert str(response) in python.answers
    assert response.source_nodes[0].node.node_id in python.gold_passage_ids


def test_baselines_on_odqa_match_the_reference_figures(shared_data, minilm):
    """BM25 on the full corpus; MiniLM on a seeded 2,000-passage subset holding the gold ones."""
    questions = odqa_questions("val", ["nq", "squad", "popqa_longtail"], limit=60,
                               data=shared_data)
    corpus = odqa_corpus(shared_data)
    by_id = {p.id: p for p in corpus}
    bm25 = BM25Retriever()
    bm25.index(corpus)
    rows = evaluate_retrieval(bm25, questions, by_id, "val")
    assert _metric(rows, "nq", "acc@20") >= 0.85  # reference .95 on all dev questions
    assert _metric(rows, "squad", "acc@5") >= 0.8  # reference .90

    gold = {pid for q in questions for pid in q.gold_passage_ids}
    others = random.Random(0).sample([p for p in corpus if p.id not in gold], 2000 - len(gold))
    subset = [p for p in corpus if p.id in gold] + others
    dense = DenseRetriever(minilm, show_progress=False)
    dense.index(subset)
    rows = evaluate_retrieval(dense, questions, by_id, "val")
    assert _metric(rows, "nq", "acc@1") >= 0.85  # reference .91 on the full corpus
    assert _metric(rows, "squad", "acc@5") >= 0.8  # reference .85
