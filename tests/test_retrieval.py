from __future__ import annotations

import json

import numpy as np
import pytest

from invar_rag_integrations.data import Passage
from invar_rag_integrations.demo import demo_passages, demo_questions
from invar_rag_integrations.models import load_coarse_encoder
from invar_rag_integrations.retrieval import BM25Retriever, DenseRetriever, Retriever
from invar_rag_integrations.training.catalog import make_retriever


@pytest.fixture()
def tiny_dense(tiny_encoder_dir) -> DenseRetriever:
    return DenseRetriever(str(tiny_encoder_dir), show_progress=False)


@pytest.fixture(params=["bm25", "dense"])
def retriever(request, tiny_encoder_dir) -> Retriever:
    if request.param == "bm25":
        return BM25Retriever()
    return DenseRetriever(str(tiny_encoder_dir), show_progress=False)


def test_search_returns_ranked_ids_and_scores(retriever):
    retriever.index(demo_passages())
    results = retriever.search(["Who discovered penicillin?", "deepest lake"], k=5)
    assert len(results) == 2
    for result in results:
        assert len(result.ids) == len(result.scores) == 5
        assert len(set(result.ids)) == 5
        assert result.scores == sorted(result.scores, reverse=True)


def test_bm25_finds_the_gold_passages():
    retriever = BM25Retriever()
    retriever.index(demo_passages())
    questions = demo_questions()
    results = retriever.search([q.question for q in questions], k=1)
    hits = sum(r.ids[0] in q.gold_passage_ids for q, r in zip(questions, results))
    assert hits >= 8


def test_k_larger_than_corpus_returns_every_passage(retriever):
    passages = demo_passages()[:7]
    retriever.index(passages)
    [result] = retriever.search(["planet"], k=100)
    assert sorted(result.ids) == sorted(p.id for p in passages)


@pytest.mark.parametrize("k", [0, -3, 2.5, True])
def test_bad_k_is_rejected(retriever, k):
    retriever.index(demo_passages()[:3])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        retriever.search(["planet"], k=k)


def test_bad_queries_are_rejected(retriever):
    retriever.index(demo_passages()[:3])
    with pytest.raises(ValueError, match=r"queries\[1\] is empty"):
        retriever.search(["ok", "   "], k=1)
    with pytest.raises(TypeError, match="not one string"):
        retriever.search("planet", k=1)
    assert retriever.search([], k=3) == []


def test_index_errors(retriever):
    with pytest.raises(ValueError, match="passages: the corpus is empty"):
        retriever.index([])
    with pytest.raises(ValueError, match="duplicate passage ids: 'x'"):
        retriever.index([Passage("x", "a"), Passage("x", "b")])
    with pytest.raises(RuntimeError, match="no index"):
        retriever.search(["q"], k=1)


def test_save_and_load_give_identical_results(retriever, tmp_path):
    retriever.index(demo_passages())
    queries = [q.question for q in demo_questions()]
    before = retriever.search(queries, k=4)
    retriever.save(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "retriever.json").read_text())["kind"] == retriever.kind
    loaded = Retriever.load(tmp_path / "saved")
    assert type(loaded) is type(retriever)
    after = loaded.search(queries, k=4)
    assert [r.ids for r in after] == [r.ids for r in before]
    assert [s for r in after for s in r.scores] == pytest.approx(
        [s for r in before for s in r.scores], rel=1e-5)


def test_load_rejects_folders_that_are_not_retrievers(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved retriever"):
        Retriever.load(tmp_path)
    (tmp_path / "retriever.json").write_text('{"kind": "magic"}')
    with pytest.raises(ValueError, match="unknown retriever kind 'magic'"):
        Retriever.load(tmp_path)


def test_dense_corpus_embeddings_are_cached(tiny_dense, tiny_encoder_dir):
    tiny_dense.index(demo_passages())
    assert not tiny_dense.last_index_cached
    again = DenseRetriever(str(tiny_encoder_dir), show_progress=False)
    again.index(demo_passages())
    assert again.last_index_cached
    changed = DenseRetriever(str(tiny_encoder_dir), show_progress=False)
    changed.index(demo_passages()[:-1])
    assert not changed.last_index_cached
    uncached = DenseRetriever(load_coarse_encoder(str(tiny_encoder_dir)), use_cache=False,
                              show_progress=False)
    uncached.index(demo_passages())
    assert not uncached.last_index_cached


def test_dense_index_refuses_another_encoder(tiny_dense, tmp_path):
    tiny_dense.index(demo_passages()[:5])
    tiny_dense.save(tmp_path / "saved")
    manifest = tmp_path / "saved" / "retriever.json"
    config = json.loads(manifest.read_text())
    config["encoder_identity"] = "sha256:other"
    manifest.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="was built with encoder sha256:other"):
        Retriever.load(tmp_path / "saved")


def test_make_retriever(tmp_path):
    assert isinstance(make_retriever("bm25"), BM25Retriever)
    with pytest.raises(ValueError, match="unknown retriever 'tfidf'"):
        make_retriever("tfidf")
    bm25 = BM25Retriever()
    bm25.index(demo_passages()[:4])
    bm25.save(tmp_path / "b")
    assert make_retriever(str(tmp_path / "b")).passage_ids == bm25.passage_ids


def test_reciprocal_rank_fusion_hand_worked():
    from invar_rag_integrations.retrieval import SearchResult, reciprocal_rank_fusion

    a = SearchResult(["x", "y", "z"], [3.0, 2.0, 1.0])
    b = SearchResult(["y", "w"], [0.9, 0.8])
    fused = reciprocal_rank_fusion([a, b], k=3, rrf_k=60)
    # y: 1/62 + 1/61, x: 1/61, w: 1/62, z: 1/63
    assert fused.ids == ["y", "x", "w"]
    assert fused.scores[0] == pytest.approx(1 / 62 + 1 / 61)


def test_fusion_retriever_indexes_searches_saves_and_loads(tiny_encoder_dir, tmp_path):
    from invar_rag_integrations.retrieval import FusionRetriever

    fusion = FusionRetriever([BM25Retriever(), DenseRetriever(str(tiny_encoder_dir),
                                                              show_progress=False)], depth=10)
    fusion.index(demo_passages())
    queries = [q.question for q in demo_questions()]
    before = fusion.search(queries, k=5)
    assert all(len(r.ids) == 5 for r in before)
    fusion.save(tmp_path / "rrf")
    loaded = Retriever.load(tmp_path / "rrf")
    assert loaded.name.startswith("rrf(bm25+")
    assert [r.ids for r in loaded.search(queries, k=5)] == [r.ids for r in before]
    with pytest.raises(ValueError, match="at least two"):
        FusionRetriever([BM25Retriever()])


def test_embeddings_are_stored_per_text_so_shared_texts_are_encoded_once(tmp_path):
    from invar_rag_integrations.retrieval.embedding_cache import cached_embeddings

    calls: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return np.array([[len(t), t.count("a")] for t in texts], dtype=np.float32)

    first, cached = cached_embeddings(["a", "bb", "a"], "toy", encode, chunk_size=1)
    assert not cached and calls == [["a"], ["bb"]]  # a repeated text is encoded once
    again, cached = cached_embeddings(["bb", "ccc", "a"], "toy", encode)
    assert not cached and calls[-1] == ["ccc"]  # only the new text
    assert np.array_equal(again, encode(["bb", "ccc", "a"]))
    whole, cached = cached_embeddings(["bb", "ccc", "a"], "toy", encode)
    assert cached and np.array_equal(whole, again)
    other, _ = cached_embeddings(["a"], "another model", encode)
    assert calls[-1] == ["a"]  # another encoder never reads these vectors
