from __future__ import annotations

import pytest

from invar_rag_integrations.evaluation.metrics import (
    exact_match,
    f1_score,
    first_hit_rank,
    has_answer,
    match_tokens,
    normalize_answer,
)


def test_match_tokens_normalises_case_punctuation_articles_and_spaces():
    assert match_tokens("  The Beatles,\tan English band!  ") == ["beatles", "english", "band"]


def test_has_answer_matches_whole_tokens_not_substrings():
    assert not has_answer(["pol"], "He joined the police force.")
    assert has_answer(["police"], "He joined the police force.")


def test_has_answer_needs_a_contiguous_sequence():
    assert has_answer(["Super Bowl LII,"], "the Eagles won Super Bowl LII in 2018")
    assert not has_answer(["Super Bowl LII"], "the Super Bowl, then game LII")


def test_has_answer_unicode_forms_match_after_nfd():
    composed, decomposed = "Röntgen", "Ro\u0308ntgen"
    assert has_answer([composed], f"Wilhelm {decomposed} won")
    assert not has_answer(["Rontgen"], "Wilhelm Röntgen won")  # accents are kept, as in DPR


def test_has_answer_ignores_articles_and_punctuation_inside_answers():
    assert has_answer(["the Indian Ocean"], "pearls from Indian ocean waters")
    assert has_answer(["Destiny's Child"], "sung by Destiny's Child.")
    assert has_answer(["Goeppert-Mayer"], "Maria Goeppert Mayer")


def test_has_answer_any_of_several_gold_answers_and_empty_answers():
    assert has_answer(["David J. Ryder", "David Motl"], "director David Motl said")
    assert not has_answer(["", "..."], "anything at all")


def test_first_hit_rank():
    assert first_hit_rank(["Paris"], ["Lyon is big", "Paris is the capital"]) == 1
    assert first_hit_rank(["Rome"], ["Lyon", "Paris"]) is None


def test_normalize_answer_squad_style():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"


@pytest.mark.parametrize(
    ("prediction", "answers", "em"),
    [("the Pacific Ocean", ["Pacific Ocean"], 1.0), ("Pacific", ["Pacific Ocean"], 0.0),
     ("ÉCOLE", ["école"], 1.0), ("1,000", ["1000"], 1.0), ("", ["x"], 0.0),
     ("Tombaugh", ["Clyde Tombaugh", "Tombaugh"], 1.0)],
)
def test_exact_match(prediction, answers, em):
    assert exact_match(prediction, answers) == em


def test_f1_hand_worked():
    # pred tokens [barack, obama, jr], gold [barack, obama]: P=2/3, R=1, F1=0.8
    assert f1_score("Barack Obama Jr.", ["Barack Obama"]) == pytest.approx(0.8)
    assert f1_score("red", ["blue", "red car"]) == pytest.approx(2 / 3)
    assert f1_score("a", ["the"]) == 1.0  # both normalise to nothing
    assert f1_score("cat", ["dog"]) == 0.0


def test_accuracy_by_dataset_averages_datasets_not_questions() -> None:
    from invar_rag_integrations.evaluation.metrics import accuracy_by_dataset

    table = accuracy_by_dataset(["nq", "nq", "nq", "nq", "squad"], [1, 1, 1, 0, 0])
    assert table == {"nq": 0.75, "squad": 0.0, "mean": 0.375}
