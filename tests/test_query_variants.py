from __future__ import annotations

import pytest

from invar_rag_integrations.training.query_variants import REWRITE_KINDS, query_variants, rewrite

Q = "Who sings the theme song for the Proud Family?"


def test_each_kind_on_a_hand_worked_question():
    assert rewrite(Q, "prefix").endswith("who sings the theme song for the Proud Family?")
    assert rewrite(Q, "wh_end") == "sings theme song for Proud Family who"
    assert rewrite(Q, "drop_articles") == "Who sings theme song for Proud Family?"
    assert rewrite(Q, "case_punct") == "who sings the theme song for the proud family"
    assert rewrite("when is the fourth movie out", "case_punct") == "when is the fourth movie out?"
    typo = rewrite(Q, "typo")
    assert typo != Q and sorted(typo) == sorted(Q)
    assert rewrite("how many countries are in opec", "wh_end") == "countries are in opec how many"


def test_rewrites_are_seeded_and_deterministic():
    assert query_variants(Q, seed=3) == query_variants(Q, seed=3)
    prefixes = {rewrite(f"{Q} {i}", "prefix", seed=0).split(" who")[0] for i in range(40)}
    assert len(prefixes) > 2  # the prefix varies across questions


def test_every_kind_keeps_text_and_errors_are_clear():
    for kind, text in query_variants("is it?"):
        assert text.strip(), kind
    assert [k for k, _ in query_variants(Q)] == list(REWRITE_KINDS)
    with pytest.raises(ValueError, match="unknown rewrite kind"):
        rewrite(Q, "shout")
    with pytest.raises(ValueError, match="empty"):
        rewrite("  ", "prefix")
