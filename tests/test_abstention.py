"""Abstention: questions the corpus cannot answer, the evidence of an answer, the fitted model
and its threshold, and the RAG declining (core; the framework shells in their own tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import abstaining

from invar_rag_integrations.data import Passage, Question
from invar_rag_integrations.demo import demo_passages
from invar_rag_integrations.evaluation.abstention_eval import (
    AbstentionExample,
    at_threshold,
    auroc,
    coverage_curve,
)
from invar_rag_integrations.evaluation.metrics import has_answer
from invar_rag_integrations.evaluation.unanswerable import AnswerIndex, unanswerable_set
from invar_rag_integrations.generation.abstention import (
    DECLINED_TEXT,
    AbstentionModel,
    Evidence,
    load_abstention,
    store_abstention,
)
from invar_rag_integrations.invar.calibration import Logistic
from invar_rag_integrations.rag import InvarRAG, RAGPipeline
from invar_rag_integrations.system import read_manifest
from invar_rag_integrations.training.abstention import fit_abstention, keeping_threshold

CORPUS = [Passage("a", "Paris is the capital of France.", "Paris"),
          Passage("b", "The Seine flows through Paris.", "Seine"),
          Passage("c", "Berlin is the capital of Germany.", "Berlin"),
          Passage("d", "Mount Everest is the tallest mountain.", "Everest"),
          Passage("e", "The Rhine flows past Cologne.", "Rhine")]


def test_unanswerable_set_counts_each_rule_and_removes_every_answer_passage() -> None:
    questions = [Question("1", "What is the capital of France?", ("Paris",), "nq"),
                 Question("2", "Which capital city is in Germany?", ("Berlin",), "nq"),
                 Question("3", "Which river flows past Cologne?", ("Rhine",), "nq"),
                 Question("4", "Who painted it?", ("Picasso",), "nq"),
                 Question("5", "Which city is the capital?", ("capital city",), "nq")]
    chosen = unanswerable_set(questions, CORPUS, max_passages=1)
    assert [q.id for q in chosen.questions] == ["2", "3"]
    assert chosen.excluded == {"answer_word_in_question": 1, "answer_in_no_passage": 1,
                               "answer_in_too_many": 1}
    assert chosen.removed == {"c", "e"} and [p.id for p in chosen.corpus] == ["a", "b", "d"]
    assert not any(has_answer(q.answers, p.full_text()) for q in chosen.questions
                   for p in chosen.corpus)
    with pytest.raises(ValueError, match="none of 1 questions"):
        unanswerable_set(questions[3:4], CORPUS)
    with pytest.raises(ValueError, match="max_passages must be positive"):
        unanswerable_set(questions, CORPUS, max_passages=0)


def test_the_answer_index_finds_what_has_answer_finds() -> None:
    passages = demo_passages()
    index = AnswerIndex(passages)
    for answers in (["penicillin"], ["Alexander Fleming"], ["the capital"], ["no such words"],
                    ["Paris", "Everest"], [""]):
        expected = {i for i, p in enumerate(passages) if has_answer(answers, p.full_text())}
        assert index.holding(answers) == expected


def test_evidence_from_scores_and_log_probabilities() -> None:
    evidence = Evidence.of([0.5, 0.5], logprob=-2.0, num_tokens=4, closed=(-6.0, 3),
                           in_passages=True)
    assert evidence.relevance == 0.5 and evidence.relevance_any == pytest.approx(0.75)
    assert evidence.answer_logprob == -0.5 and evidence.closed_logprob == -2.0
    assert evidence.pmi == 4.0 and evidence.in_passages == 1.0
    empty = Evidence.of([], 0.0, 0, (0.0, 0), False)
    assert empty.relevance == 0.0 and empty.relevance_any == 0.0 and empty.pmi == 0.0
    skipped = Evidence.of([0.5], -2.0, 4, None, False)
    assert np.isnan(skipped.closed_logprob) and np.isnan(skipped.pmi)


def _model(intercept: float, threshold: float) -> AbstentionModel:
    return AbstentionModel(Logistic(("relevance",), (0.0,), intercept), threshold)


def test_abstention_model_round_trip_and_bad_entries() -> None:
    model = AbstentionModel(Logistic(("relevance", "pmi"), (2.0, 0.5), -1.0), 0.3,
                            {"source": "test"})
    evidence = Evidence.of([0.8], -1.0, 2, (-3.0, 2), True)
    assert model.reads_closed_book and not _model(0.0, 0.5).reads_closed_book
    assert model.confidence(evidence) == pytest.approx(1 / (1 + np.exp(-(-1 + 1.6 + 1.0))))
    again = AbstentionModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again == model
    with pytest.raises(ValueError, match="signals must be among"):
        AbstentionModel(Logistic(("cosine",), (1.0,), 0.0), 0.5)
    with pytest.raises(ValueError, match=r"abstention threshold is a confidence in \[0, 1\]"):
        _model(0.0, 1.5)
    with pytest.raises(ValueError, match="malformed abstention entry"):
        AbstentionModel.from_dict({"threshold": 0.5})


def _examples(rng: np.random.Generator, n: int) -> list[AbstentionExample]:
    examples = []
    for i in range(n):
        answerable = i % 2 == 0
        relevance = float(np.clip(rng.normal(0.6 if answerable else 0.3, 0.15), 0, 1))
        evidence = Evidence.of([relevance], -1.0, 2, (-2.0, 2), answerable)
        examples.append(AbstentionExample(str(i), "nq", answerable, "x",
                                          answerable and i % 4 == 0, evidence))
    return examples


def test_fit_keeps_the_share_of_correct_answers_it_was_asked_to() -> None:
    examples = _examples(np.random.default_rng(0), 200)
    model = fit_abstention(examples, ("relevance",), keep_correct=0.9, source="unit")
    assert model.model.weights[0] > 0
    table = {"relevance": np.array([e.evidence.relevance for e in examples])}
    confidence = model.model.probability(table)
    figures = at_threshold(confidence, examples, model.threshold)
    assert figures["correct_kept"] >= 0.9 and figures["declined_unanswerable"] > 0.5
    assert model.fitted_on["correct"] == 50 and model.fitted_on["datasets"] == {"nq": 200}
    assert auroc(confidence, [e.answerable for e in examples]) > 0.8
    with pytest.raises(ValueError, match="at least 20 answerable and 20 unanswerable"):
        fit_abstention(examples[:30], ("relevance",))


def test_threshold_coverage_and_auroc_helpers() -> None:
    assert keeping_threshold(np.array([0.9, 0.1, 0.5, 0.7]), 0.75) == 0.5
    assert keeping_threshold(np.array([0.9, 0.1]), 1.0) == 0.1
    with pytest.raises(ValueError, match="keep_correct"):
        keeping_threshold(np.array([0.5]), 0.0)
    curve = coverage_curve([0.9, 0.8, 0.2, 0.1], [True, False, True, False], steps=2)
    assert curve == [(0.5, 0.5), (1.0, 0.5)]
    assert auroc([0.9, 0.1], [True, False]) == 1.0 and np.isnan(auroc([0.5], [True]))


@pytest.fixture(scope="module")
def rag(tiny_rag_system: Path) -> InvarRAG:
    return InvarRAG.from_pretrained(tiny_rag_system, corpus=demo_passages())


def test_the_rag_declines_below_the_threshold_and_answers_above_it(rag: InvarRAG) -> None:
    question = "who discovered penicillin"
    plain = rag.answer(question)
    assert not plain.declined and plain.confidence is None and plain.evidence is None
    declining = abstaining(rag, 0.6)  # confidence 0.5 < 0.6
    answer = declining.answer(question)
    assert answer.declined and answer.text == DECLINED_TEXT
    assert answer.confidence == pytest.approx(0.5) and answer.sources == plain.sources
    assert answer.evidence.relevance == max(s.score for s in plain.sources)
    assert np.isnan(answer.evidence.pmi)  # a model of relevance alone needs no closed-book pass
    full = rag.answer_batch([question], evidence=True)[0].evidence
    assert full.relevance == answer.evidence.relevance and np.isfinite(full.pmi)
    assert list(declining.stream(question)) == [DECLINED_TEXT]
    assert declining.answer(question, abstain=False).text == plain.text
    answering = abstaining(rag, 0.4)
    kept = answering.answer(question)
    assert not kept.declined and kept.text == plain.text and kept.confidence == 0.5
    assert list(answering.stream(question)) == [plain.text]
    with pytest.raises(ValueError, match="no abstention model"):
        rag.answer(question, abstain=True)
    with pytest.raises(ValueError, match="no abstention model"):
        RAGPipeline(rag.generator, rag.retriever, list(rag.passages.values()), abstain=True)


def test_evidence_log_probabilities_are_the_models(rag: InvarRAG) -> None:
    import torch

    generator = rag.generator
    prompt = rag.template.render("capital of france")
    [generation] = generator.generate([prompt], max_new_tokens=3, stop=(), adapter=rag.adapter)
    ids = generator.tokenizer(prompt, return_tensors="pt")["input_ids"]
    with generator.using(rag.adapter), torch.inference_mode():
        new = generator.model.generate(ids, max_new_tokens=3, do_sample=False,
                                       pad_token_id=generator.tokenizer.pad_token_id)
        logits = generator.model(new).logits.float().log_softmax(-1)
    steps = range(ids.shape[1], new.shape[1])
    expected = sum(float(logits[0, t - 1, new[0, t]]) for t in steps)
    assert generation.logprob == pytest.approx(expected, abs=1e-4)
    [(total, count)] = generator.answer_logprobs([prompt], [" Paris"], adapter=rag.adapter)
    assert count == len(generator.tokenizer(" Paris", add_special_tokens=False)["input_ids"])
    assert total < 0
    with pytest.raises(ValueError, match="answer is empty"):
        generator.answer_logprobs([prompt], [" "])


def test_a_stored_model_loads_with_its_system_and_goes_stale_when_retrained(
        rag: InvarRAG, tiny_rag_system: Path, tmp_path: Path) -> None:
    import shutil

    system = tmp_path / "system"
    shutil.copytree(tiny_rag_system, system)
    store_abstention(system, _model(0.0, 0.6), on_by_default=True)
    loaded = InvarRAG.from_pretrained(system, corpus=demo_passages())
    assert loaded.abstain and loaded.abstention.threshold == 0.6
    assert loaded.answer("who discovered penicillin").declined
    assert not InvarRAG.from_pretrained(system, corpus=demo_passages(), abstain=False).abstain
    manifest = read_manifest(system)
    manifest["generator"]["hash"] = "retrained"
    with pytest.warns(UserWarning, match="fitted with another retriever or generator"):
        assert load_abstention(manifest) == (None, False)


def test_fit_abstention_answers_both_sets_and_says_when_there_are_too_few(
        tiny_rag_system: Path, tmp_path: Path) -> None:
    import shutil

    from conftest import write_odqa

    from invar_rag_integrations.cli import main
    from invar_rag_integrations.paths import cache_dir

    system = tmp_path / "system"
    shutil.copytree(tiny_rag_system, system)
    data = write_odqa(tmp_path)
    with pytest.raises(SystemExit, match="fitting abstention needs at least 20 answerable and "
                                         "20 unanswerable questions and 10 correct answers"):
        main(["fit-abstention", str(system), "--data-dir", str(data), "--split", "dev",
              "--datasets", "nq", "squad"])
    [examples] = (cache_dir() / "abstention").glob("examples-*.jsonl")
    records = [json.loads(line) for line in examples.read_text().splitlines()]
    assert {r["answerable"] for r in records} == {True, False}
    assert "abstention" not in read_manifest(system)
