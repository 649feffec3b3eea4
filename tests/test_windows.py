"""Long nodes read as windows: spans, settings, pre-selection, aggregation, the scorer reading
whole nodes, and stage 1's window vectors (tiny models)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from invar_rag_integrations.data import Passage
from invar_rag_integrations.invar import InvarScorer, ScorerSettings
from invar_rag_integrations.invar.windows import aggregate, bm25_best_windows
from invar_rag_integrations.models import load_base_lm, load_coarse_encoder
from invar_rag_integrations.retrieval import DenseRetriever
from invar_rag_integrations.retrieval.text_windows import text_windows, window_spans

FILLER = "the river flows past the city and the mountain " * 12
LONG = Passage("long", FILLER + "Alexander Fleming discovered penicillin in 1928.", "Medicine")


@pytest.fixture()
def lm(tiny_lm_dir: Path):
    return load_base_lm(str(tiny_lm_dir))


def _scorer(lm, **settings) -> InvarScorer:
    model, tokenizer = lm
    base = {"max_passage_tokens": 24, "window_stride": 16}
    return InvarScorer(model, tokenizer, ScorerSettings(**{**base, **settings}), batch_size=3,
                       precision="float32")


def test_spans_cover_every_token_and_the_last_ends_at_the_end() -> None:
    assert window_spans(10, 16, 8) == [(0, 10)]
    spans = window_spans(50, 16, 12)
    assert spans[0] == (0, 16) and spans[-1] == (34, 50)
    assert all(b - a == 16 for a, b in spans)
    covered = set().union(*(range(a, b) for a, b in spans))
    assert covered == set(range(50))


@pytest.mark.parametrize(("settings", "message"), [
    ({"max_passage_tokens": 8}, "at least 16 tokens, got 8"),
    ({"max_passage_tokens": 32, "window_stride": 40}, "between 1 and .* = 32.*got 40"),
    ({"window_stride": 0}, "got 0"),
    ({"max_windows": 0}, "max_windows must be at least 1, got 0"),
    ({"window_aggregation": "sum"}, "window_aggregation"),
    ({"preselect": "minilm"}, "preselect"),
    ({"window_temperature": 0.0}, "temperature must be positive"),
])
def test_window_settings_that_cannot_work_fail_with_the_numbers(settings, message) -> None:
    with pytest.raises(ValueError, match=message):
        ScorerSettings(**settings)


def test_aggregations_and_their_gradients() -> None:
    scores = torch.tensor([-3.0, -1.0, -2.0], requires_grad=True)
    assert aggregate(scores, "first", 1.0).item() == -3.0
    assert aggregate(scores, "max", 1.0).item() == -1.0
    assert aggregate(scores, "mean", 1.0).item() == pytest.approx(-2.0)
    soft = aggregate(scores, "softmax", 0.5)
    assert -2.0 < soft.item() < -1.0  # between the mean and the maximum
    assert aggregate(scores, "softmax", 100.0).item() == pytest.approx(-2.0, abs=0.01)
    soft.backward()
    assert scores.grad[1] > scores.grad[2] > scores.grad[0] >= 0
    assert aggregate(torch.tensor([-4.0]), "softmax", 0.1).item() == -4.0


def test_bm25_picks_the_windows_with_the_question_terms_in_reading_order() -> None:
    texts = [["rivers and lakes", "penicillin was discovered", "mountains", "fleming penicillin"],
             ["only one window"]]
    assert bm25_best_windows("who discovered penicillin", texts, 2) == [[1, 3], [0]]
    assert bm25_best_windows("zzz", texts, 2) == [[0, 1], [0]]  # no match: the first ones


def test_a_long_node_scores_as_its_windows_aggregated(lm) -> None:
    query = "who discovered penicillin"
    scorer = _scorer(lm, max_windows=100, preselect="none", window_aggregation="max")
    [windows], _ = scorer.tokens.windows(query, [LONG])
    assert len(windows) > 3 and all(len(w) <= 24 for w in windows)
    assert all(w[:len(scorer.tokens.node(LONG).prefix)] == scorer.tokens.node(LONG).prefix
               for w in windows)  # the title is in every window
    one_by_one = scorer.pair_scores([scorer.tokens.question(query)] * len(windows), windows)
    [[value]] = scorer.score_batch([query], [[LONG]])
    assert value == pytest.approx(one_by_one.max().item(), abs=1e-5)
    first = _scorer(lm, window_aggregation="first", max_windows=1, preselect="none")
    with pytest.warns(UserWarning, match="read in its first windows only"):
        assert first.score(query, [LONG])[0] == pytest.approx(one_by_one[0].item(), abs=1e-5)


def test_preselection_reads_the_answer_window_of_a_long_node(lm) -> None:
    query = "who discovered penicillin"
    scorer = _scorer(lm, max_windows=1, preselect="bm25")
    [[window]], cut = scorer.tokens.windows(query, [LONG])
    assert cut == 1
    assert "penicillin" in scorer.tokenizer.decode(window)
    [[first]], _ = _scorer(lm, max_windows=1, preselect="none").tokens.windows(query, [LONG])
    assert "penicillin" not in scorer.tokenizer.decode(first)


def test_empty_nodes_score_lowest_and_leave_the_others_alone(lm) -> None:
    scorer = _scorer(lm)
    query = "who discovered penicillin"
    alone = scorer.score(query, [LONG])
    scores = scorer.score(query, ["", LONG, "   \n", Passage("t", " ", "Title only")])
    assert scores[1] == pytest.approx(alone[0], abs=1e-5)
    assert np.isneginf(scores[[0, 2, 3]]).all()
    assert scorer.score(query, ["  "])[0] == -np.inf


def test_a_changed_text_under_the_same_id_is_read_again(lm) -> None:
    scorer = _scorer(lm)
    before = scorer.score("who discovered penicillin", [Passage("a", "Fleming and penicillin")])
    after = scorer.score("who discovered penicillin", [Passage("a", "The Nile flows north")])
    fresh = _scorer(lm).score("who discovered penicillin", [Passage("a", "The Nile flows north")])
    assert after[0] == pytest.approx(fresh[0], abs=1e-6) and after[0] != before[0]


def test_a_huge_node_is_read_in_capped_windows_and_counted(lm) -> None:
    huge = Passage("huge", "mountain river city " * 30_000 + "penicillin was found by fleming")
    scorer = _scorer(lm, max_passage_tokens=64, window_stride=64, max_windows=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pre-selection reads in part by design: no warning
        [[value]] = scorer.score_batch(["who found penicillin"], [[huge]])
    assert np.isfinite(value)
    assert scorer.window_counts == {"nodes": 1, "windows_read": 2, "nodes_read_in_part": 1}
    first_only = _scorer(lm, max_windows=2, preselect="none")
    with pytest.warns(UserWarning, match="read in its first windows only"):
        first_only.score("who found penicillin", [LONG, LONG])
    assert first_only.window_counts["nodes_read_in_part"] == 2


def test_text_windows_cut_on_the_encoders_tokens_under_the_title(tiny_encoder_dir) -> None:
    tokenizer = load_coarse_encoder(str(tiny_encoder_dir)).tokenizer
    assert text_windows(tokenizer, "Nile", "a short text", 32, 24) == ["Nile\na short text"]
    windows = text_windows(tokenizer, "Medicine", LONG.text, 32, 24)
    assert len(windows) > 2 and all(w.startswith("Medicine\n") for w in windows)
    assert all(len(tokenizer(w)["input_ids"]) <= 34 for w in windows)
    assert windows[-1].endswith("in 1928.") and LONG.text.startswith(windows[0][9:])


def test_dense_windows_index_long_passages_under_one_id(tiny_encoder_dir,
                                                        tmp_path: Path) -> None:
    encoder = load_coarse_encoder(str(tiny_encoder_dir))
    encoder.max_seq_length = 32
    passages = [LONG, Passage("short", "Mount Everest is high", "Everest"),
                Passage("other", FILLER, "Rivers")]
    windowed = DenseRetriever(encoder, show_progress=False, windows=True)
    windowed.index(passages)
    assert len(windowed.vectors()) > len(passages) and windowed.name.endswith("-windows")
    [result] = windowed.search(["who discovered penicillin"], 3)
    assert sorted(result.ids) == sorted(p.id for p in passages)  # each passage once
    query = windowed.encode(["who discovered penicillin"])
    cosines = windowed.passage_cosines(query, [[0, 1, 2]])[0]
    by_id = dict(zip(result.ids, result.scores))
    assert cosines == pytest.approx([by_id["long"], by_id["short"], by_id["other"]], abs=1e-5)
    plain = DenseRetriever(encoder, show_progress=False)
    plain.index(passages)
    assert np.allclose(windowed.passage_vectors(), plain.vectors(), atol=1e-6)  # first windows
    windowed.save(tmp_path / "index")
    again = DenseRetriever.load(tmp_path / "index")
    again.encoder.max_seq_length = 32
    assert again.search(["who discovered penicillin"], 3) == [result]


def test_a_vector_store_gets_a_long_texts_mean_window_vector(tiny_lm_dir, tiny_encoder_dir):
    from invar_rag_integrations.invar import InvarSettings, TwoStageRetriever

    core = TwoStageRetriever.zero_shot(str(tiny_lm_dir), str(tiny_encoder_dir), precision="float32",
                                    show_progress=False)
    reranker = core.reranker
    reranker.coarse_encoder.max_seq_length = 32
    short = "Mount Everest is high"
    vectors = reranker.text_vectors([short, LONG.text])
    assert np.allclose(vectors[0], reranker.coarse([short])[0], atol=1e-6)
    windows = text_windows(reranker.coarse_encoder.tokenizer, "", LONG.text, 30, 22)
    mean = reranker.coarse(windows).mean(0)
    assert len(windows) > 2 and np.allclose(vectors[1], mean / np.linalg.norm(mean), atol=1e-5)
    reranker.settings = InvarSettings(coarse_windows=False)
    assert np.allclose(reranker.text_vectors([LONG.text])[0], reranker.coarse([LONG.text])[0],
                       atol=1e-6)
