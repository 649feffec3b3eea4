from __future__ import annotations

import json

import pytest

from invar_rag_integrations.evaluation import datasets as ds


def test_data_dir_missing_says_how_to_point_at_data(tmp_path, monkeypatch):
    monkeypatch.delenv("INVAR_RAG_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="--data-dir DIR or the INVAR_RAG_DATA"):
        ds.odqa_corpus(tmp_path / "missing")


def test_env_var_points_at_data(odqa_dir, monkeypatch):
    monkeypatch.setenv("INVAR_RAG_DATA", str(odqa_dir))
    assert len(ds.odqa_corpus()) == 40


def test_odqa_questions_filters_datasets_and_limit(odqa_dir):
    questions = ds.odqa_questions("dev", ["nq", "squad"], limit=2, data=odqa_dir)
    assert [q.dataset for q in questions] == ["nq", "nq", "squad", "squad"]
    assert questions[0].answers and questions[0].gold_passage_ids


def test_odqa_questions_bad_arguments(odqa_dir):
    with pytest.raises(ValueError, match="unknown datasets"):
        ds.odqa_questions("dev", ["webq"], data=odqa_dir)
    with pytest.raises(ValueError, match="unknown split"):
        ds.odqa_questions("test", data=odqa_dir)
    with pytest.raises(ValueError, match="limit must be positive"):
        ds.odqa_questions("dev", limit=0, data=odqa_dir)


def test_validation_carve_out_is_fixed_and_disjoint(odqa_dir):
    dev = ds.odqa_questions("dev", data=odqa_dir)
    val = ds.odqa_questions("val", data=odqa_dir)
    train = ds.odqa_questions("train", data=odqa_dir)
    assert {q.id for q in val} | {q.id for q in train} == {q.id for q in dev}
    assert not {q.id for q in val} & {q.id for q in train}
    assert [q.id for q in val] == [q.id for q in ds.select_split(reversed(dev), "val")][::-1]
    share = sum(ds.in_validation(f"q-{i}") for i in range(10_000)) / 10_000
    assert abs(share - ds.VAL_PERCENT / 100) < 0.02


def test_freebaseqa_parses_and_rejects_bad_lines(odqa_dir, tmp_path):
    with pytest.raises(ValueError, match="FreebaseQA-dev.txt:2: expected 'question | answer'"):
        ds.freebaseqa(data=odqa_dir)
    good = tmp_path / "fb.txt"
    good.write_text("Who wrote Hamlet? | william shakespeare\n\n")
    [q] = ds.freebaseqa(good)
    assert (q.question, q.answers, q.dataset) == ("Who wrote Hamlet?", ("william shakespeare",),
                                                  "freebaseqa")


@pytest.mark.parametrize(
    ("name", "row", "expected_answers"),
    [("nq_open", {"question": "who q", "answer": ["A", "B"]}, ("A", "B")),
     ("popqa", {"id": 7, "question": "pq", "possible_answers": json.dumps(["x", "y"]),
                "s_pop": 12}, ("x", "y")),
     ("triviaqa", {"question_id": "tq1", "question": "tq",
                   "answer": {"value": "Ottawa", "aliases": ["Ottawa", "Ottawa, Canada"],
                              "normalized_aliases": ["ottawa", "ottawa canada"]}},
      ("Ottawa", "ottawa", "ottawa canada"))],
)
def test_hf_loaders_on_local_files(tmp_path, name, row, expected_answers):
    path = tmp_path / f"{name}.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    questions = ds.hf_questions(name, path, limit=1)
    assert len(questions) == 1
    assert questions[0].answers == expected_answers
    assert questions[0].question == row["question"]


def test_hf_loader_rejects_unknown_names_and_file_types(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        ds.hf_questions("webq")
    bad = tmp_path / "x.csv"
    bad.write_text("a\n")
    with pytest.raises(ValueError, match="unsupported file type 'csv'"):
        ds.hf_questions("nq_open", bad)
