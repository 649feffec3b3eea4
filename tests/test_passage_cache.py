"""The passage key/value cache: cached scores equal one-pass scores, memory stays bounded, and
states of another model, adapter or weights version are never used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from invar_rag_integrations.data import Passage
from invar_rag_integrations.invar import InvarScorer, ScorerSettings
from invar_rag_integrations.invar.passage_cache import PassageCache
from invar_rag_integrations.models import load_base_lm

LONG = " ".join(f"The river {w} flows north past the city of Paris in France." for w in
                ("Nile", "Seine", "Rhine", "Thames", "Loire", "Danube", "Volga", "Elbe"))
PASSAGES = [Passage("p1", "Alexander Fleming discovered penicillin in 1928.", "Penicillin"),
            Passage("p2", "Mount Everest is the highest mountain on Earth.", "Everest"),
            Passage("p3", LONG, "Rivers"), Passage("p4", "   "),
            Passage("p5", "The Wright brothers made the first flight in 1903.")]
QUERIES = ["who discovered penicillin", "which river flows north past paris in france",
           "when was the first flight"]


@pytest.fixture()
def lm(tiny_lm_dir: Path):
    return load_base_lm(str(tiny_lm_dir))


def _scorer(lm, precision: str = "float32", **settings) -> InvarScorer:
    model, tokenizer = lm
    base = {"max_passage_tokens": 24, "window_stride": 16, "max_windows": 3, **settings}
    return InvarScorer(model, tokenizer, ScorerSettings(**base), batch_size=2,
                       precision=precision)


def _scores(scorer: InvarScorer) -> list[np.ndarray]:
    return scorer.score_batch(QUERIES, [PASSAGES, PASSAGES[::-1], PASSAGES[1:3]])


def test_cached_scores_equal_one_pass_scores_on_misses_and_hits(lm) -> None:
    plain = _scores(_scorer(lm))
    scorer = _scorer(lm)
    scorer.use_passage_cache(64)
    missed = _scores(scorer)
    misses = scorer.passage_cache.counts["misses"]
    hit = _scores(scorer)
    for expected, first, again in zip(plain, missed, hit):
        np.testing.assert_allclose(first, expected, atol=1e-5)
        np.testing.assert_allclose(again, expected, atol=1e-5)
        assert np.isneginf(expected).sum() == np.isneginf(again).sum()  # the empty node
    assert misses > 0 and scorer.passage_cache.counts["misses"] == misses  # all hits after
    assert scorer.passage_cache.counts["hits"] >= misses


def test_cached_features_and_head_equal_one_pass(lm) -> None:
    plain = _scorer(lm, head=True)
    torch.nn.init.normal_(plain.head.weight, std=0.5)
    scorer = _scorer(lm, head=True)
    scorer.head = plain.head
    scorer.use_passage_cache(64)
    for _ in range(2):  # misses, then hits
        for a, b in zip(_scores(plain), _scores(scorer)):
            np.testing.assert_allclose(b, a, atol=1e-5)
        got = scorer.likelihoods_and_features(QUERIES[:1], [PASSAGES])
        want = plain.likelihoods_and_features(QUERIES[:1], [PASSAGES])
        for a, b in zip(want, got):
            np.testing.assert_allclose(b[0], a[0], atol=1e-4)


def test_memory_stays_within_the_bound_and_evictions_are_counted(lm) -> None:
    scorer = _scorer(lm)
    scorer.use_passage_cache(1)
    _scores(scorer)
    cache = scorer.passage_cache
    state_bytes = cache.bytes / len(cache)
    small = PassageCache(2.5 * state_bytes / 2**20)
    scorer.passage_cache = small
    expected = _scores(_scorer(lm))
    for a, b in zip(expected, _scores(scorer)):
        np.testing.assert_allclose(b, a, atol=1e-5)
    assert small.bytes <= small.max_bytes and len(small) == 2
    assert small.counts["evictions"] > 0
    tiny = PassageCache(state_bytes / 2 / 2**20)  # no state fits: nothing kept, scores right
    scorer.passage_cache = tiny
    for a, b in zip(expected, _scores(scorer)):
        np.testing.assert_allclose(b, a, atol=1e-5)
    assert len(tiny) == 0 and tiny.bytes == 0


def test_states_of_another_adapter_or_older_weights_are_never_used(lm) -> None:
    from peft import get_peft_model

    from invar_rag_integrations.models.adapters import lora_config

    model, tokenizer = lm
    peft_model = get_peft_model(model, lora_config(model, 4, 8, 0.0, ["q_proj", "v_proj"]),
                                adapter_name="retriever")
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    settings = ScorerSettings(max_passage_tokens=24, window_stride=16, max_windows=3)
    base = InvarScorer(peft_model, tokenizer, settings, None, precision="float32")
    tuned = InvarScorer(peft_model, tokenizer, settings, "retriever", precision="float32")
    want_base, want_tuned = (s.score(QUERIES[0], PASSAGES) for s in (base, tuned))
    finite = np.isfinite(want_base)
    assert not np.allclose(want_base[finite], want_tuned[finite], atol=1e-3)
    shared = PassageCache(64)  # one cache, two adapters
    base.passage_cache = tuned.passage_cache = shared
    np.testing.assert_allclose(base.score(QUERIES[0], PASSAGES), want_base, atol=1e-5)
    misses = shared.counts["misses"]
    np.testing.assert_allclose(tuned.score(QUERIES[0], PASSAGES), want_tuned, atol=1e-5)
    assert shared.counts["misses"] == 2 * misses  # the tuned scorer read nothing of base's
    with torch.no_grad():  # the weights change in place: the older states are not read
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(-1.0)
    tuned.passage_cache = None
    want = tuned.score(QUERIES[0], PASSAGES)
    tuned.passage_cache = shared
    np.testing.assert_allclose(tuned.score(QUERIES[0], PASSAGES), want, atol=1e-5)
    assert shared.counts["misses"] == 3 * misses


def test_training_passes_never_use_the_cache(lm) -> None:
    scorer = _scorer(lm)
    scorer.use_passage_cache(64)
    question = scorer.tokens.question(QUERIES[0])
    scorer.pair_scores([question], [scorer.tokens.node(PASSAGES[0]).body]).sum().backward()
    assert scorer.passage_cache.counts == {"hits": 0, "misses": 0, "evictions": 0}


def test_settings_that_cannot_work_fail_with_the_reason(lm) -> None:
    with pytest.raises(ValueError, match="float32"):
        _scorer(lm, precision="bfloat16").use_passage_cache(64)
    with pytest.raises(ValueError, match="positive size"):
        _scorer(lm).use_passage_cache(0)
    model, tokenizer = lm
    from invar_rag_integrations.invar.projector import Projector

    settings = ScorerSettings(num_soft_tokens=2, projector_hidden=8)
    soft = InvarScorer(model, tokenizer, settings, projector=Projector.for_model(model, 4,
                                                                                  settings),
                       precision="float32")
    with pytest.raises(ValueError, match="soft tokens"):
        soft.use_passage_cache(64)
    scorer = _scorer(lm)
    scorer.use_passage_cache(64)
    scorer.use_passage_cache(None)
    assert scorer.passage_cache is None
