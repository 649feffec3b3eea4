"""``ce-ft``: the cross-encoder baseline's training and its reranking retriever, on tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from invar_rag_integrations.data import Passage
from invar_rag_integrations.demo import demo_passages, demo_questions
from invar_rag_integrations.retrieval import Retriever
from invar_rag_integrations.retrieval.cross_encoder import CrossEncoderRetriever, load_cross_encoder
from invar_rag_integrations.training.baselines import Example
from invar_rag_integrations.training.cross_encoder import (
    CrossEncoderSettings,
    train_cross_encoder,
    training_rows,
)


def _examples() -> list[Example]:
    ids = [p.id for p in demo_passages()]
    return [Example(q, list(q.gold_passage_ids), [i for i in ids if i not in q.gold_passage_ids]
                    [j : j + 3]) for j, q in enumerate(demo_questions())]


def test_training_rows_hold_each_question_with_its_negatives() -> None:
    by_id = {p.id: p for p in demo_passages()}
    mnrl = training_rows(_examples(), by_id, CrossEncoderSettings(hard_negatives=2))
    assert list(mnrl) == ["query", "positive", "negative_1", "negative_2"]
    assert len(mnrl["query"]) == 10 and all(len(c) == 10 for c in mnrl.values())
    bce = training_rows(_examples(), by_id, CrossEncoderSettings(loss="bce", hard_negatives=2))
    assert len(bce["query"]) == 30 and bce["label"][:3] == [1.0, 0.0, 0.0]
    few = training_rows(_examples(), by_id, CrossEncoderSettings(hard_negatives=4))
    assert few["query"] == []  # three negatives each: not enough, left out


def test_settings_out_of_range_fail_with_the_value() -> None:
    with pytest.raises(ValueError, match="loss must be one of"):
        CrossEncoderSettings(loss="hinge")
    with pytest.raises(ValueError, match="hard_negatives"):
        CrossEncoderSettings(hard_negatives=0)


@pytest.mark.parametrize("loss", ["mnrl", "bce"])
def test_training_keeps_the_best_checkpoint_and_reports_its_curve(
        tiny_encoder_dir: Path, tmp_path: Path, loss: str) -> None:
    passages = demo_passages()
    questions = demo_questions()
    pools = [[p.id for p in passages[j : j + 4]] + list(q.gold_passage_ids)
             for j, q in enumerate(questions)]
    settings = CrossEncoderSettings(loss=loss, hard_negatives=2, in_batch_negatives=1,
                                    batch_size=4, eval_every=1, max_length=64,
                                    encoder=str(tiny_encoder_dir.parent / "hf"))
    curve = train_cross_encoder(_examples(), questions, pools, passages, tmp_path, settings)
    assert [p["step"] for p in curve] == [0, 1, 2, 3]
    assert all(0 <= p["mean"] <= 1 for p in curve)
    assert (tmp_path / "best" / "config.json").is_file() and not (tmp_path / "run").exists()


@pytest.fixture()
def reranker(tiny_encoder_dir: Path) -> CrossEncoderRetriever:
    model = load_cross_encoder(tiny_encoder_dir.parent / "hf", max_length=64)
    retriever = CrossEncoderRetriever(model, candidates=4, coarse_encoder=str(tiny_encoder_dir))
    retriever.index(demo_passages() + [Passage("blank", "  ", "")])
    return retriever


def test_it_reranks_stage_1_candidates_by_the_cross_encoder(reranker) -> None:
    query = "Who discovered penicillin?"
    proposed = reranker.stage1.search([query], 4)[0].ids
    found = reranker.search([query], 4)[0]
    assert sorted(found.ids) == sorted(proposed)
    logits = reranker.model.predict([(query, reranker.passages[i].full_text()) for i in found.ids],
                                    activation_fn=lambda x: x)
    np.testing.assert_allclose(found.scores, logits, atol=1e-5)
    assert found.scores == sorted(found.scores, reverse=True)
    assert np.isneginf(reranker.scores(query, ["", "penicillin"])[0])
    with pytest.raises(ValueError, match="candidate depth"):
        reranker.search([query], 5)


def test_a_saved_reranker_loads_and_ranks_the_same(reranker, tmp_path: Path) -> None:
    query = "Which planet is the largest?"
    reranker.save(tmp_path / "ce")
    loaded = Retriever.load(tmp_path / "ce")
    assert isinstance(loaded, CrossEncoderRetriever)
    assert loaded.search([query], 3) == reranker.search([query], 3)


def test_eval_retrieval_reads_a_saved_reranker_to_its_candidate_depth(
        tiny_encoder_dir: Path, odqa_dir: Path, tmp_path: Path, capsys) -> None:
    from invar_rag_integrations.cli import main

    model = load_cross_encoder(tiny_encoder_dir.parent / "hf", max_length=64)
    retriever = CrossEncoderRetriever(model, candidates=4, coarse_encoder=str(tiny_encoder_dir))
    retriever.index(demo_passages())
    retriever.save(tmp_path / "ce")
    main(["eval-retrieval", "--retriever", str(tmp_path / "ce"), "--data-dir", str(odqa_dir),
          "--k", "1", "5", "--output", str(tmp_path / "out.json")])
    captured = capsys.readouterr()
    assert "acc@1" in captured.out and "acc@5" not in captured.out
    assert "reads 4 candidates per query" in captured.err
