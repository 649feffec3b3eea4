"""Synthetic questions from a corpus: answer spans, the filters, the writers a user may bring,
resuming, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from invar_rag_integrations.data import Passage
from invar_rag_integrations.synthetic import (
    SyntheticSettings,
    answer_spans,
    as_writer,
    choose_span,
    clean_question,
    make_questions,
    question_prompt,
)

PASSAGES = [
    Passage("p1", "Alexander Fleming discovered penicillin in 1928 at St Mary's Hospital in "
                  "London, which changed medicine.", "Penicillin"),
    Passage("p2", "Lake Baikal in Siberia is the deepest lake in the world, reaching 1,642 "
                  "metres, and holds a fifth of the fresh water.", "Lake Baikal"),
    Passage("p3", "too short", "Short"),
    Passage("p4", "The Wright brothers made the first powered flight in 1903 near Kitty Hawk "
                  "in North Carolina on a cold morning.", "Wright brothers"),
]


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_answer_spans_are_numbers_and_names_not_sentence_openers():
    spans = answer_spans(PASSAGES[0])
    assert "1928" in spans and "Alexander Fleming" in spans and "London" in spans
    assert answer_spans(Passage("x", "The cat sat. It slept.")) == []
    spans = answer_spans(PASSAGES[3])  # "The Wright" loses its sentence-opening article
    assert "Kitty Hawk" in spans and "Wright" in spans and "The Wright" not in spans


def test_a_long_node_is_read_around_its_answer():
    long = Passage("n", "The valley farms grow barley and oats. " * 60
                   + "The lighthouse was designed by Ottilie Brand in 1887.", "Varnholm")
    prompt = question_prompt(long, "Ottilie Brand", 120)
    passage = prompt.rsplit("Passage: ", 1)[1].split("\nAnswer:")[0]
    assert "Ottilie Brand" in passage and len(passage.split()) <= 122  # title + 120 words
    short = question_prompt(PASSAGES[0], "1928", 120)
    assert "Penicillin. Alexander Fleming discovered penicillin in 1928" in short


def test_clean_question_keeps_one_question_line():
    assert clean_question(" Who discovered penicillin?\nAnswer: Fleming") == \
        "Who discovered penicillin?"
    assert clean_question("Question: When was it?") == "When was it?"
    for bad in ("", "Fleming", "Why?", "no question mark here at all"):
        assert clean_question(bad) is None


def test_a_langchain_writer_fills_the_odqa_layout_and_drops_what_fails(tmp_path):
    from langchain_core.language_models.fake import FakeListLLM

    from invar_rag_integrations.evaluation import odqa_corpus

    # one reply per passage with a span, in sample order: p1, p2, p4 (seed 0 order below)
    writer = FakeListLLM(responses=["In which year was penicillin discovered by Fleming?",
                                    "", "Lake Baikal 1,642 metres?"])
    settings = SyntheticSettings(passages=None, round_trip="none", batch_size=8, seed=0)
    counts = make_questions(PASSAGES, tmp_path / "out", writer, settings, show_progress=False)
    assert counts["passages"] == 4 and counts["by_status"]["no_answer_span"] == 1
    assert counts["questions"] + sum(v for k, v in counts["by_status"].items() if k != "ok") \
        == 4
    questions = read(tmp_path / "out" / "odqa" / "dev_questions.jsonl")
    assert all(q["dataset"] == "synthetic" and q["gold_passage_ids"] for q in questions)
    assert len(odqa_corpus(tmp_path / "out")) == 4  # the drivers' loader reads the corpus
    statuses = {r["status"] for r in read(tmp_path / "out" / "progress.jsonl")}
    assert statuses <= {"ok", "no_answer_span", "malformed_question", "answer_not_in_passage",
                        "question_contains_answer", "duplicate"}
    assert "malformed_question" in statuses  # the empty reply: dropped and counted


def test_answer_round_trip_keeps_only_questions_the_lm_answers_back(tmp_path):
    from langchain_core.language_models.fake import FakeListLLM

    writer = FakeListLLM(responses=["What does this passage say about the drug discovery?"])
    settings = SyntheticSettings(passages=None, round_trip="answer", seed=0)
    span = choose_span(PASSAGES[0], settings)
    right = make_questions(PASSAGES[:1], tmp_path / "a", writer, settings,
                           answerer=FakeListLLM(responses=[f" {span}\nmore text"]),
                           show_progress=False)
    wrong = make_questions(PASSAGES[:1], tmp_path / "b", writer, settings,
                           answerer=FakeListLLM(responses=[" Marie Curie"]), show_progress=False)
    assert (right["questions"], wrong["questions"]) == (1, 0)
    [kept] = read(tmp_path / "a" / "odqa" / "dev_questions.jsonl")
    assert kept["answers"] == [span] and kept["source"]["round_trip_f1"] == 1.0
    [failed] = read(tmp_path / "b" / "progress.jsonl")
    assert failed["status"] == "round_trip_failed" and failed["round_trip_f1"] == 0.0


def test_retrieval_round_trip_keeps_questions_whose_passage_bm25_ranks_high(tmp_path):
    from langchain_core.language_models.fake import FakeListLLM

    settings = SyntheticSettings(passages=None, round_trip="retrieval", round_trip_depth=1)
    about_p1 = "Which hospital in the capital saw mould kill bacteria?"  # p1's own words
    about_p1_too = "Which hospital first made penicillin?"  # written for p2, ranks p1 first
    counts = make_questions(PASSAGES[:2], tmp_path, FakeListLLM(
        responses=[about_p1, about_p1_too]), settings, show_progress=False)
    assert counts["questions"] == 1 and counts["by_status"]["round_trip_failed"] == 1
    [kept] = read(tmp_path / "odqa" / "dev_questions.jsonl")
    assert kept["gold_passage_ids"] == ["p1"] and kept["source"]["round_trip_rank"] == 1
    failed = [r for r in read(tmp_path / "progress.jsonl") if r["status"] != "ok"]
    assert failed[0]["round_trip_rank"] is None
    with pytest.raises(ValueError, match="round_trip must be one of"):
        SyntheticSettings(round_trip="yes")


def test_a_rerun_continues_and_another_corpus_is_refused(tmp_path):
    from llama_index.core.llms import MockLLM

    calls = []

    class CountingLLM(MockLLM):
        def complete(self, prompt, formatted=False, **kwargs):
            calls.append(prompt)
            return super().complete(prompt, formatted, **kwargs)

    writer = CountingLLM(max_tokens=4)  # "text text text text": malformed, dropped
    first = make_questions(PASSAGES, tmp_path, writer, SyntheticSettings(passages=2,
                           round_trip="none"), show_progress=False)
    assert first["passages"] == 2
    asked = len(calls)
    again = make_questions(PASSAGES, tmp_path, writer, SyntheticSettings(passages=4,
                           round_trip="none"), show_progress=False)
    assert again["passages"] == 4 and len(calls) - asked <= 2  # only the new passages
    timing = json.loads((tmp_path / "synthetic.json").read_text())["timing"]
    assert timing["passages"] == 4 and timing["seconds"] > 0  # summed over both runs
    other = [Passage("q1", "Another corpus entirely, about Mount Everest in 1953.", "")]
    with pytest.raises(ValueError, match="holds questions of another corpus"):
        make_questions(other, tmp_path, writer, show_progress=False)
    with pytest.raises(TypeError, match="question writer must be"):
        as_writer(object())


def test_the_embedded_lm_writes_through_the_same_path(tmp_path, tiny_lm_dir):
    from invar_rag_integrations.generation import HFGenerator
    from invar_rag_integrations.models import load_base_lm

    generator = HFGenerator(*load_base_lm(str(tiny_lm_dir)))
    counts = make_questions(PASSAGES, tmp_path, generator, SyntheticSettings(passages=None),
                            show_progress=False)
    assert counts["passages"] == 4  # whatever the untrained LM wrote was checked and counted
    assert sum(counts["by_status"].values()) == 4


def _letters(i: int) -> str:
    return "".join("abcdefghijklmnopqrstuvwxyz"[int(d)] for d in str(i))


@pytest.mark.slow
def test_both_training_stages_read_the_generated_folder_unchanged(
        tmp_path, retriever_config):
    from langchain_core.language_models.fake import FakeListLLM

    from invar_rag_integrations.cli import main as cli
    from invar_rag_integrations.demo import demo_passages
    from invar_rag_integrations.evaluation import odqa_questions
    from invar_rag_integrations.training.retriever_data import select_questions
    from tests.conftest import generator_config

    # distinct questions without any span of the passages: every pair passes the filters
    writer = FakeListLLM(responses=[f"Which fact does the passage {_letters(i)} state?"
                                    for i in range(40)])
    out = tmp_path / "synthetic"
    counts = make_questions(demo_passages(), out, writer, SyntheticSettings(
        passages=None, round_trip="none"), show_progress=False)
    assert counts["questions"] >= 30
    assert odqa_questions("fit", ["synthetic"], data=out) and \
        odqa_questions("tune", ["synthetic"], data=out)
    with pytest.raises(ValueError, match=r"unknown datasets \['nope'\]; known in .*synthetic"):
        odqa_questions("fit", ["nope"], data=out)

    synthetic = ["--data_dir", str(out), "--train_datasets", "synthetic",
                 "--questions_per_dataset", "-1"]
    cli(["train-retriever", str(retriever_config(tmp_path)), *synthetic,
         "--tune_questions_per_dataset", "3", "--max_steps", "2"])
    system = tmp_path / "system"
    manifest = json.loads((system / "invar_rag.json").read_text())
    fit, tune = select_questions(["synthetic"], [-1], 3, 0, str(out))
    assert manifest["metrics"]["retriever"]["train_examples"] == len(fit)
    assert len(tune) == 3 and manifest["training"]["retriever"]["data"]["train_datasets"] == \
        ["synthetic"]

    cli(["train-generator", str(generator_config(tmp_path, system, out, max_steps=1)),
         *synthetic])
    manifest = json.loads((system / "invar_rag.json").read_text())
    train, _ = select_questions(["synthetic"], [-1], 0, 42, str(out), split="train")
    assert manifest["metrics"]["generator"]["train_examples"] == len(train)
