"""Hot passages read once: ``python -m benchmarks.passage_cache``.

The shipped zero-shot two-stage retriever (its early-stop reading, RRF's top 5) serves
questions one at a time in float32, with and without the passage key/value cache
(``retrieval/passage_cache.py``), on two traffic patterns: ``val-once`` (each val question of
nq, squad and popqa_longtail once: the benchmark's own pattern, where only passages shared by
several questions hit) and ``zipf-repeated`` (``--requests`` requests drawn with Zipf weights
1/rank^1.1 from a pool of ``--pool`` of those questions: popular questions come back). Each
pattern reports the hit rate, latency p50/p95 with and without the cache, the speed-up on
queries whose every read hit (their uncached latency over their cached one, median), whether
every query's top 5 (ids and order) is the same as without the cache, the largest score
difference, and the memory per cached passage. ``bf16-check`` measures what the cache would do
to a bfloat16 scorer (why it refuses one): its largest score change and how many top-5 orders
change. Writes ``benchmarks/results/passage_cache.json``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.run import DATASETS, _row

K = 5


def serve(retriever, questions: list[str]) -> tuple[list, np.ndarray, np.ndarray]:
    """Each question searched alone: results, latency (ms) and, with a cache, whether every
    passage the query read was a hit."""
    cache = retriever.scorer.passage_cache
    results, times, all_hit = [], [], []
    for question in questions:
        misses = cache.counts["misses"] if cache is not None else 0
        started = time.perf_counter()
        results += retriever.search([question], K)
        times.append((time.perf_counter() - started) * 1000)
        all_hit.append(cache is not None and cache.counts["misses"] == misses)
    return results, np.array(times), np.array(all_hit)


def compare(plain: list, cached: list) -> tuple[float, float]:
    """Share of queries whose top 5 (ids, order, which were read) is the same, and the largest
    change of a read candidate's score (``inf`` when a top 5 differs)."""
    same, diff = [], 0.0
    for a, b in zip(plain, cached):
        first, second = np.array(a.scores), np.array(b.scores)
        read = np.isfinite(first)  # unread candidates score -inf
        same.append(a.ids == b.ids and bool((read == np.isfinite(second)).all()))
        diff = max(diff, float(np.abs(first[read] - second[read]).max(initial=0.0))
                   if same[-1] else float("inf"))
    return float(np.mean(same)), diff


def pattern_rows(pattern: str, retriever, questions: list[str], cache_mb: float) -> list[dict]:
    from invar_rag_integrations.invar.passage_cache import PassageCache

    retriever.search(questions[:1], K)  # warm up
    retriever.scorer.passage_cache = None
    plain, plain_ms, _ = serve(retriever, questions)
    retriever.scorer.passage_cache = cache = PassageCache(cache_mb)
    cached, cached_ms, all_hit = serve(retriever, questions)
    same, diff = compare(plain, cached)
    looked_up = cache.counts["hits"] + cache.counts["misses"]
    n = len(questions)
    rows = [_row("upr-zero-shot-float32", pattern, f"latency_p{p}_ms",
                 float(np.percentile(plain_ms, p)), n, "val") for p in (50, 95)]
    rows += [_row("upr-zero-shot-float32-cache", pattern, f"latency_p{p}_ms",
                  float(np.percentile(cached_ms, p)), n, "val") for p in (50, 95)]
    speedup = float(np.median(plain_ms[all_hit] / cached_ms[all_hit])) if all_hit.any() \
        else float("nan")
    rows += [_row("upr-zero-shot-float32-cache", pattern, metric, value, n, "val")
             for metric, value in (
                 ("hit_rate", cache.counts["hits"] / max(1, looked_up)),
                 ("all_hit_queries", float(all_hit.mean())),
                 ("hit_speedup", speedup), ("same_top5", same), ("max_score_diff", diff),
                 ("mb_per_passage", cache.bytes / max(1, len(cache)) / 2**20),
                 ("cached_mb", cache.bytes / 2**20), ("evictions", cache.counts["evictions"]))]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data-dir", help="folder with odqa/ (default: $INVAR_RAG_DATA or "
                                           "../shared/data)")
    parser.add_argument("--val-per-dataset", type=int, default=50)
    parser.add_argument("--pool", type=int, default=60)
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--bf16-questions", type=int, default=30)
    parser.add_argument("--cache-mb", type=float, default=2048)
    args = parser.parse_args(argv)
    from benchmarks.run import save_and_render
    from invar_rag_integrations.evaluation import odqa_corpus, odqa_questions
    from invar_rag_integrations.evaluation.qa_eval import sample_per_dataset
    from invar_rag_integrations.invar import InvarScorer, TwoStageRetriever
    from invar_rag_integrations.invar.passage_cache import PassageCache

    corpus = odqa_corpus(args.data_dir)
    questions = [q.question for q in sample_per_dataset(
        odqa_questions("val", DATASETS, data=args.data_dir), args.val_per_dataset, seed=0)]
    retriever = TwoStageRetriever.zero_shot(precision="float32", show_progress=False)
    retriever.index(corpus)
    rows = pattern_rows("val-once", retriever, questions, args.cache_mb)
    rng = np.random.default_rng(0)
    pool = list(rng.permutation(questions)[: args.pool])
    weights = 1.0 / np.arange(1, len(pool) + 1) ** 1.1
    traffic = [pool[i] for i in rng.choice(len(pool), args.requests, p=weights / weights.sum())]
    rows += pattern_rows("zipf-repeated", retriever, traffic, args.cache_mb)

    scorer = retriever.scorer  # the same reading in bfloat16: what caching would change there
    retriever.reranker.scorer = InvarScorer(scorer.lm, scorer.tokenizer, scorer.settings,
                                            precision="bfloat16")
    checked = questions[:: max(1, len(questions) // args.bf16_questions)]
    plain, _, _ = serve(retriever, checked)
    retriever.scorer.passage_cache = PassageCache(args.cache_mb)  # past the float32 guard
    cached, _, _ = serve(retriever, checked)
    same, _ = compare(plain, cached)
    lm = retriever.scorer.score_batch(checked, [[retriever.passages[i] for i in r.ids]
                                                for r in plain])
    retriever.scorer.passage_cache = None
    lm_plain = retriever.scorer.score_batch(checked, [[retriever.passages[i] for i in r.ids]
                                                      for r in plain])
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(lm, lm_plain))
    rows += [_row("upr-zero-shot-bf16-cache", "bf16-check", "same_top5", same, len(checked),
                  "val"),
             _row("upr-zero-shot-bf16-cache", "bf16-check", "max_score_diff", diff,
                  len(checked), "val")]
    save_and_render("passage_cache", rows, "benchmarks.passage_cache", argv)


if __name__ == "__main__":
    main()
