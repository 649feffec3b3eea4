"""A coarse encoder with its own query and passage prompts (E5 / BGE style), on a tiny BERT
sentence-transformers folder: every encoding site reads queries and passages with them, and an
index built with other prompts is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from invar_rag_integrations.demo import demo_passages
from invar_rag_integrations.models import load_coarse_encoder
from invar_rag_integrations.models.encoding import PASSAGE, QUERY, encode, text_room
from invar_rag_integrations.retrieval import DenseRetriever
from invar_rag_integrations.retrieval.base import Retriever

QUESTION = "who discovered penicillin"


def with_prompts(source: Path, target: Path, prompts: dict[str, str]) -> Path:
    """A copy of the encoder folder ``source`` whose sentence-transformers config holds
    ``prompts``."""
    if not target.exists():
        shutil.copytree(source, target)
    config = target / "config_sentence_transformers.json"
    settings = json.loads(config.read_text())
    settings["prompts"] = prompts
    config.write_text(json.dumps(settings))
    return target


def test_queries_and_passages_are_read_with_the_encoders_own_prompts(
        tiny_encoder_dir: Path, tmp_path: Path) -> None:
    folder = with_prompts(tiny_encoder_dir, tmp_path / "e5",
                          {"query": "query: ", "passage": "passage: "})
    encoder, plain = load_coarse_encoder(str(folder)), load_coarse_encoder(str(tiny_encoder_dir))
    passages = demo_passages()[:4]
    texts = [p.full_text() for p in passages]

    query = encode(encoder, [QUESTION], QUERY)
    np.testing.assert_allclose(query, encode(plain, [f"query: {QUESTION}"], QUERY), atol=1e-6)
    assert not np.allclose(query, encode(plain, [QUESTION], QUERY), atol=1e-3)
    np.testing.assert_allclose(encode(encoder, texts, PASSAGE),
                               encode(plain, [f"passage: {t}" for t in texts], PASSAGE),
                               atol=1e-6)
    assert np.linalg.norm(query, axis=1) == pytest.approx(1.0)
    prompt = len(encoder.tokenizer("passage: ", add_special_tokens=False)["input_ids"])
    assert text_room(encoder, PASSAGE) == text_room(plain, PASSAGE) - prompt
    with pytest.raises(ValueError, match="kind"):
        encode(encoder, [QUESTION], "document")

    # stage 1 indexes passages and searches with queries, each with its prompt
    dense = DenseRetriever(str(folder), use_cache=False, show_progress=False)
    dense.index(passages)
    np.testing.assert_allclose(dense.vectors(), encode(plain, [f"passage: {t}" for t in texts],
                                                       PASSAGE), atol=1e-6)
    [found] = dense.search([QUESTION], 2)
    expected = encode(plain, [f"passage: {t}" for t in texts], PASSAGE) @ query[0]
    assert found.scores == pytest.approx(sorted(expected, reverse=True)[:2], abs=1e-5)

    # the prompts are part of the encoder's identity: an index built with them is refused
    # once the folder's prompts change
    assert encoder.invar_source.identity != plain.invar_source.identity
    dense.save(tmp_path / "index")
    with_prompts(tiny_encoder_dir, folder, {"query": "query: ", "passage": ""})
    with pytest.raises(ValueError, match="re-index"):
        Retriever.load(tmp_path / "index")


def test_the_invar_reranker_reads_queries_and_nodes_with_the_prompts(
        tiny_lm_dir: Path, tiny_encoder_dir: Path, tmp_path: Path) -> None:
    from invar_rag_integrations.invar import InvarSettings, TwoStageRetriever

    folder = with_prompts(tiny_encoder_dir, tmp_path / "bge",
                          {"query": "represent this question: "})
    plain = load_coarse_encoder(str(tiny_encoder_dir))
    retriever = TwoStageRetriever.zero_shot(str(tiny_lm_dir), str(folder),
                                         InvarSettings(candidates=3), precision="float32",
                                         show_progress=False)
    reranker = retriever.reranker
    np.testing.assert_allclose(reranker.coarse([QUESTION]),
                               encode(plain, [f"represent this question: {QUESTION}"], QUERY),
                               atol=1e-6)
    # a BGE-style encoder has no passage prompt: nodes are read as they are
    node = demo_passages()[0].full_text()
    np.testing.assert_allclose(reranker.text_vectors([node]),
                               encode(plain, [node], PASSAGE), atol=1e-6)
    retriever.index(demo_passages())
    assert retriever.search([QUESTION], 3)[0].ids
