"""When stage 2 pays: ``python -m benchmarks.stage2_policy``.

For the tuning slice of the training questions and for the val questions (squad, popqa_longtail,
nq), RRF's top ``--depth`` candidates are scored once by the zero-shot scorer (``r``, cached),
with their cosines and BM25 terms; policies are then replayed on those scores: a fixed depth
d = 1..depth (the scorer reads RRF's first d, the rest keep stage-1 order), skipping stage 2
when stage 1 looks sure (MiniLM's cosine margin, agreement of MiniLM, BM25 and RRF on the first
candidate), and a logistic gate on those signals. Thresholds are chosen on the tuning slice and
reported on val with Acc@1/5 and pairs read per query. Then the shipped retriever (its
``read_first`` / ``stop_margin`` defaults), the same at today's fixed depth and ``ce-ft`` (a
cross-encoder trained on the training questions, reranking the same RRF candidates; its
training time and tuning curve beside it) serve the val questions one at a time: Acc@1/5,
pairs read per query, latency p50/p95. Writes
``benchmarks/results/stage2_policy.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from dataclasses import dataclass

import numpy as np

from benchmarks.run import DATASETS, _row


@dataclass
class Scored:
    """One split's questions with everything the policies read."""

    datasets: list[str]
    hits: np.ndarray  # [Q, D] an answer in RRF's candidate j
    fused: np.ndarray  # [Q, D] s(q, d) of each candidate
    features: np.ndarray  # [Q, 5] MiniLM's margin and top cosine, RRF's first is MiniLM's /
    # BM25's, rank of MiniLM's first in BM25's list
    minilm_first_hit: np.ndarray  # [Q] an answer in MiniLM's first candidate
    minilm_first_at: np.ndarray  # [Q] where MiniLM's first candidate is in RRF's list (D: absent)
    reranked: np.ndarray  # [Q, D] s(q, d) as the reranker fuses it: no BM25 term (no corpus)


def score_split(retriever, questions, by_id, depth: int, cache) -> Scored:
    """Stage-1 rankings, features and the scorer's ``r`` over RRF's candidates (``r`` read
    from ``cache`` when this split was scored before)."""
    from invar_rag_integrations.evaluation.metrics import has_answer
    from invar_rag_integrations.invar import settings_score

    texts = [q.question for q in questions]
    rrf = [r.ids for r in retriever.stage1.search(texts, depth)]
    bm25, dense = retriever.stage1.retrievers
    minilm = dense.search(texts, depth)
    by_bm25 = [r.ids for r in bm25.search(texts, depth)]
    key = hashlib.sha256(repr((retriever.identity(), texts, rrf)).encode()).hexdigest()[:16]
    path = cache / f"r-{key}.npy"
    if path.is_file():
        lm = np.load(path)
    else:
        started, lm = time.perf_counter(), []
        for start in range(0, len(texts), 8):
            chunk = slice(start, start + 8)
            lm += retriever.scorer.score_batch(texts[chunk],
                                               [[by_id[p] for p in c] for c in rrf[chunk]])
            done = min(start + 8, len(texts))
            print(f"scored {done}/{len(texts)} in {time.perf_counter() - started:.0f} s",
                  file=sys.stderr, flush=True)
        lm = np.stack(lm)
        cache.mkdir(parents=True, exist_ok=True)
        np.save(path, lm)
    settings = retriever.settings
    query_vectors = retriever.reranker.coarse(texts)
    cosines = np.stack(retriever.passage_cosines(query_vectors, rrf))
    terms = np.stack(retriever.bm25_term(texts, rrf))
    fused = settings_score(settings, lm, cosines, terms)
    reranked = settings_score(settings, lm, cosines)
    hits = np.array([[has_answer(q.answers, by_id[p].full_text()) for p in c]
                     for q, c in zip(questions, rrf)])
    features = np.array([
        [m.scores[0] - m.scores[1], m.scores[0], float(r[0] == m.ids[0]), float(r[0] == b[0]),
         b.index(m.ids[0]) if m.ids[0] in b else depth]
        for m, r, b in zip(minilm, rrf, by_bm25)], dtype=np.float32)
    first_hit = np.array([has_answer(q.answers, by_id[m.ids[0]].full_text())
                          for q, m in zip(questions, minilm)])
    first_at = np.array([r.index(m.ids[0]) if m.ids[0] in r else depth
                         for m, r in zip(minilm, rrf)])
    return Scored([q.dataset for q in questions], hits, fused, features, first_hit, first_at,
                  reranked)


def order_at_depth(fused: np.ndarray, d: int) -> np.ndarray:
    """Candidate order when the scorer reads the first ``d``: those by ``s``, then the rest in
    stage-1 order."""
    read = np.argsort(-fused[:d], kind="stable")
    return np.concatenate([read, np.arange(d, len(fused))])


def replay(scored: Scored, depths: np.ndarray, minilm_first: np.ndarray | None = None) -> dict:
    """Acc@1/5 and pairs per query when query i reads ``depths[i]`` candidates (0: stage-1
    order; with ``minilm_first[i]``, MiniLM's first candidate leads it)."""
    top1, top5 = [], []
    for i, d in enumerate(depths):
        order = order_at_depth(scored.fused[i], int(d)) if d else np.arange(len(scored.fused[i]))
        if d == 0 and minilm_first is not None and minilm_first[i]:
            at = scored.minilm_first_at[i]
            order = np.concatenate([[at], order[order != at]]) if at < len(order) else order
            if at >= len(order):  # MiniLM's first is not among RRF's: it is the answer alone
                top1.append(bool(scored.minilm_first_hit[i]))
                top5.append(bool(scored.minilm_first_hit[i] or scored.hits[i][order[:4]].any()))
                continue
        top1.append(bool(scored.hits[i][order[0]]))
        top5.append(bool(scored.hits[i][order[:5]].any()))
    return {"acc@1": np.array(top1), "acc@5": np.array(top5), "pairs": np.asarray(depths, float)}


def rows_of(system: str, split: str, scored: Scored, result: dict) -> list[dict]:
    rows = []
    names = np.array(scored.datasets)
    for dataset in DATASETS:
        mask = names == dataset
        for metric in ("acc@1", "acc@5"):
            rows.append(_row(system, dataset, metric, float(result[metric][mask].mean()),
                             int(mask.sum()), split))
        rows.append(_row(system, dataset, "pairs_per_query", float(result["pairs"][mask].mean()),
                         int(mask.sum()), split))
    return rows


def mean_acc1(result: dict, scored: Scored) -> float:
    """Acc@1 averaged over the datasets (each counts the same)."""
    names = np.array(scored.datasets)
    return float(np.mean([result["acc@1"][names == d].mean() for d in DATASETS]))


def served_rows(name: str, retriever, questions, by_id, k: int) -> list[dict]:
    """The retriever as it serves, one query at a time: Acc@1/5, pairs its reranker read per
    query (per dataset), latency p50/p95."""
    from invar_rag_integrations.evaluation.retrieval_eval import accuracy_rows, hit_ranks

    scorer = getattr(retriever, "scorer", None)  # the cross-encoder reads every candidate
    counts = scorer.window_counts if scorer is not None else {"nodes": 0}
    retriever.search([questions[0].question], k)  # warm up
    results, times, pairs = [], [], []
    for q in questions:
        before, started = counts["nodes"], time.perf_counter()
        results += retriever.search([q.question], k)
        times.append((time.perf_counter() - started) * 1000)
        pairs.append(counts["nodes"] - before if scorer is not None else len(results[-1].ids))
    rows = accuracy_rows(name, "val", questions, hit_ranks(questions, results, by_id), (1, 5))
    names = np.array([q.dataset for q in questions])
    for dataset in DATASETS:
        mask = names == dataset
        rows.append(_row(name, dataset, "pairs_per_query", float(np.mean(np.array(pairs)[mask])),
                         int(mask.sum()), "val"))
    return rows + [_row(name, "all", f"latency_p{p}_ms", float(np.percentile(times, p)),
                        len(times), "val") for p in (50, 95)]


def add_split_flags(parser: argparse.ArgumentParser) -> None:
    """The flags :func:`scored_splits` reads."""
    parser.add_argument("--data-dir", help="folder with odqa/ (default: $INVAR_RAG_DATA or "
                                           "../shared/data)")
    parser.add_argument("--tune-per-dataset", type=int, default=100)
    parser.add_argument("--val-per-dataset", type=int, default=100)
    parser.add_argument("--depth", type=int, default=10, help="RRF candidates per question")


def scored_splits(args: argparse.Namespace) -> tuple:
    """``(retriever, corpus, {"tune": Scored, "val": Scored})``: the zero-shot retriever at
    ``args.depth`` candidates over the corpus, and both splits' samples scored (``r`` cached
    under ``stage2_policy`` in the project cache)."""
    from invar_rag_integrations.evaluation import odqa_corpus, odqa_questions
    from invar_rag_integrations.evaluation.qa_eval import sample_per_dataset
    from invar_rag_integrations.invar import InvarSettings, TwoStageRetriever
    from invar_rag_integrations.paths import cache_dir

    corpus = odqa_corpus(args.data_dir)
    by_id = {p.id: p for p in corpus}
    retriever = TwoStageRetriever.zero_shot(settings=InvarSettings(candidates=args.depth),
                                         show_progress=False)
    retriever.index(corpus)
    scored = {}
    for split, count in (("tune", args.tune_per_dataset), ("val", args.val_per_dataset)):
        questions = sample_per_dataset(odqa_questions(split, DATASETS, data=args.data_dir),
                                       count, seed=0)
        scored[split] = score_split(retriever, questions, by_id, args.depth,
                                    cache_dir() / "stage2_policy")
    return retriever, corpus, scored


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_split_flags(parser)
    parser.add_argument("--shipped-depth", type=int, default=5)
    args = parser.parse_args(argv)
    from sklearn.linear_model import LogisticRegression

    from benchmarks.run import save_and_render
    from invar_rag_integrations.evaluation import odqa_questions
    from invar_rag_integrations.evaluation.qa_eval import sample_per_dataset
    from invar_rag_integrations.invar import InvarSettings
    from invar_rag_integrations.training.catalog import make_retriever

    retriever, corpus, scored = scored_splits(args)
    by_id = {p.id: p for p in corpus}
    rows = []
    for split, s in scored.items():
        n = len(s.datasets)
        for d in range(0, args.depth + 1):
            name = "stage1-rrf" if d == 0 else f"fixed-d{d}"
            rows += rows_of(name, split, s, replay(s, np.full(n, d)))
        rows += rows_of("minilm", split, s, replay(s, np.zeros(n, int), np.ones(n, bool)))

    # policies: thresholds chosen on tune (keep mean Acc@1 >= the shipped depth's, fewest pairs)
    tune = scored["tune"]
    shipped = args.shipped_depth
    target = mean_acc1(replay(tune, np.full(len(tune.datasets), shipped)), tune)
    candidates = {}
    margins = np.quantile(tune.features[:, 0], np.linspace(0, 1, 41))
    for theta in margins:
        for agree in ("none", "rrf", "bm25"):
            for lead in (False, True):
                def policy(s: Scored, theta=theta, agree=agree, lead=lead) -> tuple:
                    sure = s.features[:, 0] >= theta
                    if agree == "rrf":
                        sure &= s.features[:, 2] > 0
                    elif agree == "bm25":
                        sure &= s.features[:, 4] == 0
                    return np.where(sure, 0, shipped), sure if lead else None
                candidates[f"skip-margin{theta:.3f}-{agree}{'-minilm' if lead else ''}"] = policy
    for m in (1, 2, 3):  # read the first m; stop when the leader is clear
        def leader(s: Scored, m=m) -> np.ndarray:
            read = np.sort(s.fused[:, :m], axis=1)[:, ::-1]
            return read[:, 0] if m == 1 else read[:, 0] - read[:, 1]
        for delta in np.quantile(leader(tune), np.linspace(0, 1, 41)):
            def stop(s: Scored, m=m, delta=delta, leader=leader) -> tuple:
                return np.where(leader(s) >= delta, m, shipped), None
            candidates[f"stop-m{m}-delta{delta:.3f}"] = stop
    fit = LogisticRegression(max_iter=1000).fit(tune.features, tune.minilm_first_hit)
    for p in np.linspace(0.5, 0.99, 50):
        def gate(s: Scored, p=p) -> tuple:
            sure = fit.predict_proba(s.features)[:, 1] >= p
            return np.where(sure, 0, shipped), sure
        candidates[f"gate-p{p:.2f}"] = gate
    best: dict[str, tuple] = {}
    for name, policy in candidates.items():
        result = replay(tune, *policy(tune))
        family = name.split("-")[0]
        score = (mean_acc1(result, tune) >= target - 1e-9, -result["pairs"].mean(),
                 mean_acc1(result, tune))
        if family not in best or score > best[family][0]:
            best[family] = (score, name)
    for family, (score, name) in best.items():
        print(f"{family}: {name} on tune: mean Acc@1 {score[2]:.3f} (target {target:.3f}), "
              f"pairs {-score[1]:.2f}", file=sys.stderr)
        for split, s in scored.items():
            rows += rows_of(name, split, s, replay(s, *candidates[name](s)))

    # the shipped retriever (its defaults: early_stop.py) against today's fixed depth, as served
    val_questions = sample_per_dataset(odqa_questions("val", DATASETS, data=args.data_dir),
                                       args.val_per_dataset, seed=0)
    for name, settings in (("upr-zero-shot", InvarSettings(candidates=shipped)),
                           ("upr-zero-shot-fixed",
                            InvarSettings(candidates=shipped, read_first=shipped))):
        retriever.reranker.settings = settings
        rows += served_rows(name, retriever, val_questions, by_id, shipped)

    # the cross-encoder a user would train instead, reranking the same candidates
    ce = make_retriever("ce-ft", args.data_dir)
    ce.index(corpus)
    rows += served_rows("ce-ft", ce, val_questions, by_id, shipped)
    log = ce.training_log
    rows.append(_row("ce-ft", "all", "train_s", log["train_seconds"], log["train_questions"],
                     "train"))
    for point in log["curve"]:
        for dataset in (*DATASETS, "mean"):
            rows.append(_row("ce-ft", dataset, f"tune_acc@1:step{point['step']}",
                             point[dataset], log["tune_questions"], "tune"))
    save_and_render("stage2_policy", rows, "benchmarks.stage2_policy", argv)


if __name__ == "__main__":
    main()
