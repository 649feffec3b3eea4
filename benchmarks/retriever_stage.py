"""Retrieval-stage benchmark: ``python -m benchmarks.retriever_stage`` (part of ``make bench``).

On a seeded sample of the validation carve-out (at most ``--sample`` questions per dataset; the
same questions for every system), in one run:
1. Acc@1/5/10/20 per dataset for BM25, MiniLM, RRF(BM25, MiniLM), and the two baselines trained
   on the same training questions, ``minilm-ft`` and ``minilm-adapter`` (their tuning curves and
   training time come with them);
2. the two-stage retriever with the zero-shot scorer, ``upr-zero-shot``: stage 1's top 20 are
   scored once and the rows ``upr-zero-shot-k5/-k10/-k20`` rank the top 5/10/20 of them (the
   score of a pair does not depend on the other candidates); ``upr-zero-shot`` is the shipped
   depth; ``upr-zero-shot-minilm-k10`` uses MiniLM alone as stage 1;
3. the zero-shot scorer on Gemma-3-270M beside SmolLM2 on a smaller sample (``--gemma-sample``);
4. when named in ``--systems``, the trained Invar systems, trained (or reused when complete)
   into ``benchmarks/systems/``
   from ``training/configs/retriever_smollm2_cpu.json`` with shared caches: ``invar`` (the CPU
   configuration), ``invar-no-invar``, ``invar-no-align``, ``invar-nce-only``, ``invar-head``
   (a head on the frozen LM's question states) and ``invar-seed1`` (another training seed on
   the same questions: the noise floor of training);
5. robustness (Acc@5 on every seeded rewrite kind, top-5 Jaccard with the original query) on at
   most ``--robustness-sample`` questions per dataset;
6. speed: single-query latency p50/p95 of every system (the two-stage one at each depth), the
   naive scorer's time at depth 10 (one pair at a time, full-vocabulary log-softmax at every
   position) beside it, and peak RSS.
Each system runs in its own process. Rows of the systems run now replace their earlier rows in
``benchmarks/results/retriever_stage.json`` (``--systems`` re-runs a part).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from benchmarks.run import DATASETS, RESULTS, ROOT, _latency_rows, _peak_rss_row, _row

SYSTEMS_DIR = ROOT / "benchmarks" / "systems"
CONFIG = ROOT / "training" / "configs" / "retriever_smollm2_cpu.json"
INVAR_SYSTEMS = {"invar": [], "invar-no-invar": ["--use_invar", "false"],
                 "invar-no-align": ["--use_align", "false"],
                 "invar-nce-only": ["--use_align", "false", "--use_invar", "false"],
                 "invar-head": ["--head", "true"], "invar-seed1": ["--seed", "1"]}
BASELINES = ("bm25", "minilm", "rrf", "minilm-ft", "minilm-adapter")
ZERO_SHOT = ("upr-zero-shot", "upr-zero-shot-minilm", "upr-zero-shot-gemma")
DEPTHS = (5, 10, 20)
KS = (1, 5, 10, 20)
COMPARE_DEPTH = 10  # the depth of the side-by-side rows (Gemma, MiniLM stage 1, naive time)


def train_systems(names: list[str], config: Path) -> None:
    """Train each Invar system whose directory is not complete (the driver resumes)."""
    import subprocess

    for name in names:
        folder = SYSTEMS_DIR / name
        if (folder / "invar_rag.json").is_file() and (folder / "index").is_dir():
            print(f"== {name}: reusing {folder}", file=sys.stderr, flush=True)
            continue
        print(f"== training {name}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "invar_rag_integrations.training.train_retriever",
                        str(config), "--output_dir", str(folder), *INVAR_SYSTEMS[name]],
                       cwd=ROOT, check=True)


def _jaccard(a: list[str], b: list[str]) -> float:
    union = set(a) | set(b)
    return len(set(a) & set(b)) / len(union) if union else 1.0


def sampled_questions(data: str | None, per_dataset: int | None) -> list:
    from invar_rag_integrations.evaluation import odqa_questions
    from invar_rag_integrations.evaluation.qa_eval import sample_per_dataset

    return sample_per_dataset(odqa_questions("val", DATASETS, data=data), per_dataset, seed=0)


def _search(retriever, queries: list[str], k: int, desc: str, batch: int = 16) -> list:
    from tqdm.auto import tqdm

    results = []
    for start in tqdm(range(0, len(queries), batch), desc=desc, unit="batch"):
        results += retriever.search(queries[start : start + batch], k)
    return results


def _accuracy(system: str, questions, results, by_id, ks=KS, suffix: str = "") -> list[dict]:
    from invar_rag_integrations.evaluation.retrieval_eval import accuracy_rows, hit_ranks

    return accuracy_rows(system, "val", questions, hit_ranks(questions, results, by_id), ks,
                         suffix)


def _robustness(system: str, retriever, questions, by_id, k: int) -> list[dict]:
    from invar_rag_integrations.training.query_variants import REWRITE_KINDS, rewrite

    original = _search(retriever, [q.question for q in questions], k, f"{system} original")
    rows = _accuracy(system, questions, original, by_id, (5,), ":original")
    for kind in REWRITE_KINDS:
        results = _search(retriever, [rewrite(q.question, kind, seed=0) for q in questions], k,
                          f"{system} {kind}")
        rows += _accuracy(system, questions, results, by_id, (5,), f":{kind}")
        overlaps = [_jaccard(o.ids[:5], r.ids[:5]) for o, r in zip(original, results)]
        rows.append(_row(system, "all", f"jaccard@5:{kind}", sum(overlaps) / len(overlaps),
                         len(overlaps), "val"))
    return rows


def _baseline(system: str, data: str | None, questions, by_id, corpus, robust, latency):
    from invar_rag_integrations.training.catalog import make_retriever

    retriever = make_retriever(system, data)  # a trained baseline trains here on first use
    started = time.perf_counter()
    retriever.index(corpus)
    rows = [_row(system, "odqa-corpus", "index_s", time.perf_counter() - started, len(corpus))]
    log = getattr(retriever, "training_log", None)
    if log is not None:
        rows.append(_row(system, "train", "train_s", log["train_seconds"],
                         log["train_questions"]))
        for point in log["curve"]:
            for dataset, value in point.items():
                if dataset not in ("epoch", "step", "loss"):
                    rows.append(_row(system, dataset, f"tune_acc@1:epoch{point['epoch']}",
                                     value, log["tune_questions"], "tune"))
    results = _search(retriever, [q.question for q in questions], max(KS), system)
    rows += _accuracy(system, questions, results, by_id)
    rows += _robustness(system, retriever, robust, by_id, 5)
    rows += _latency_rows(system, retriever, latency, split="val")
    return rows


def candidate_scores(retriever, queries: list[str], proposed, query_coarse=None,
                     bm25=None):
    """``retriever.candidate_scores`` (a ``Part``: fused scores, ``r``, tokens read); for a
    scorer without an adapter (zero-shot, or a head on the frozen LM), from its cached
    likelihoods and features,
    so systems that share the frozen LM share one forward pass per pair (``pair_scores`` =
    likelihood + head(features), tested)."""
    import numpy as np
    import torch

    from invar_rag_integrations.training.head_trainer import scorer_outputs

    scorer = retriever.scorer
    if scorer.adapter is not None or scorer.settings.num_soft_tokens:
        return retriever.candidate_scores(queries, proposed, query_coarse=query_coarse,
                                          bm25=bm25)
    pairs = [(q, retriever.passages[i]) for q, r in zip(queries, proposed) for i in r.ids]
    r, features = scorer_outputs(scorer, [q for q, _ in pairs], [v for _, v in pairs], False)
    if scorer.head is not None:
        with torch.no_grad():
            r = r + scorer.head(torch.from_numpy(features))[:, 0].numpy()
    bounds = np.cumsum([len(p.ids) for p in proposed])[:-1]
    return retriever.candidate_scores(queries, proposed, np.split(r, bounds), query_coarse,
                                      bm25)


class CachedSearch:
    """``search`` of a two-stage retriever (its reading policy included) through
    :func:`candidate_scores`."""

    def __init__(self, retriever):
        self.retriever = retriever

    def search(self, queries: list[str], k: int) -> list:
        proposal = self.retriever.propose(queries)
        return self.retriever.rerank_results(
            queries, proposal.results, k,
            lambda found, proposed, query_coarse, bm25: candidate_scores(
                self.retriever, found, proposed, query_coarse, bm25), proposal)


def _depth_rows(name: str, retriever, questions, by_id, depths, shipped) -> list[dict]:
    """Score stage 1's top ``max(depths)`` once; rank the top ``d`` of them for each depth
    (depth ``shipped`` also gives the rows named ``name``). The retriever's depth is left as
    it was."""
    from tqdm.auto import tqdm

    from invar_rag_integrations.retrieval.base import top_k

    own_depth = retriever.settings.candidates
    retriever.settings.candidates = max(depths)
    queries = [q.question for q in questions]
    proposed, scores = [], []
    for start in tqdm(range(0, len(queries), 64), desc=f"{name} (depth {max(depths)})",
                      unit="batch"):
        batch = queries[start : start + 64]
        found = retriever.candidates(batch)
        proposed += found
        scores += candidate_scores(retriever, batch, found).fused
    rows = []
    for depth in depths:
        results = [top_k(p.ids[:depth], s[:depth], depth) for p, s in zip(proposed, scores)]
        ks = tuple(k for k in KS if k <= depth)
        rows += _accuracy(f"{name}-k{depth}", questions, results, by_id, ks)
        if depth == shipped:
            rows += _accuracy(name, questions, results, by_id, ks)
    retriever.settings.candidates = own_depth
    return rows


def _two_stage_latency(name: str, retriever, queries: list[str], depths) -> list[dict]:
    rows = []
    shipped = retriever.settings.candidates
    for depth in depths:
        retriever.settings.candidates = depth
        times = _timed(lambda q, d=depth: retriever.search([q], d), queries)
        rows += _latency_summary(f"{name}-k{depth}", times, len(queries))
        if depth == shipped:
            rows += _latency_summary(name, times, len(queries))
    retriever.settings.candidates = shipped
    return rows


def _timed(call, queries: list[str]) -> list[float]:
    call(queries[0])  # warm up
    times = []
    for query in queries:
        started = time.perf_counter()
        call(query)
        times.append((time.perf_counter() - started) * 1000)
    return times


def _latency_summary(system: str, times: list[float], n: int) -> list[dict]:
    cuts = statistics.quantiles(times, n=20) if len(times) > 1 else times * 19
    return [_row(system, "val-queries", "latency_p50_ms", statistics.median(times), n, "val"),
            _row(system, "val-queries", "latency_p95_ms", cuts[18], n, "val")]


def _naive_latency(retriever, queries: list[str], depth: int) -> list[dict]:
    """Stage 2 done naively: one pair per forward pass, no tokenisation cache, logits and a
    full-vocabulary log-softmax at every position."""
    import torch

    from invar_rag_integrations.data import passage_text

    scorer = retriever.scorer
    tok = scorer.tokenizer
    head, tail = scorer.settings.prompt.split("{passage}")

    def naive(query: str) -> None:
        [proposed] = retriever.stage1.search([query], depth)
        for pid in proposed.ids:
            text = passage_text(retriever.passages[pid])
            passage = tok(text, add_special_tokens=False)["input_ids"][
                : scorer.settings.max_passage_tokens]
            prefix = scorer.tokens.bos + tok(head, add_special_tokens=False)["input_ids"] + \
                passage + tok(tail, add_special_tokens=False)["input_ids"]
            question = tok(" " + query, add_special_tokens=False)["input_ids"]
            with torch.inference_mode():
                logits = scorer.lm(input_ids=torch.tensor([prefix + question])).logits[0]
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                start = len(prefix)
                sum(logprobs[start + t - 1, q].item() for t, q in enumerate(question))

    return _latency_summary(f"upr-zero-shot-naive-k{depth}", _timed(naive, queries),
                            len(queries))


def _two_stage(system: str, data: str | None, questions, by_id, corpus, robust, latency,
               gemma_questions, system_dir: str | None) -> list[dict]:
    from invar_rag_integrations.invar import InvarSettings, TwoStageRetriever

    rows: list[dict] = []
    if system_dir is not None:
        retriever = TwoStageRetriever.from_pretrained(system_dir, index=None, show_progress=False)
        manifest = json.loads((Path(system_dir) / "invar_rag.json").read_text())
        metrics = manifest["metrics"]["retriever"]
        rows += [_row(system, "train", "train_s", metrics["total_seconds"],
                      metrics["train_examples"]),
                 _row(system, "train", "train_examples_per_s",
                      metrics["train_samples_per_second"], metrics["train_examples"]),
                 _row(system, "train", "cos_weight",
                      manifest["retriever"]["settings"]["cos_weight"],
                      metrics["train_examples"])]
        for point in metrics["tuning_curve"]:
            rows += [_row(system, d, f"tune_acc@1:step{point['step']}", v, 0, "tune")
                     for d, v in point.items() if d != "step"]
    elif system == "upr-zero-shot-gemma":
        retriever = TwoStageRetriever.zero_shot("gemma3-270m", show_progress=False)
    elif system == "upr-zero-shot-minilm":
        retriever = TwoStageRetriever.zero_shot(
            settings=InvarSettings(stage1="minilm", bm25_weight=0.0), show_progress=False)
    else:
        retriever = TwoStageRetriever.zero_shot(show_progress=False)
    started = time.perf_counter()
    retriever.index(corpus)
    rows.append(_row(system, "odqa-corpus", "index_s", time.perf_counter() - started,
                     len(corpus)))
    shipped = retriever.settings.candidates
    rows.append(_row(system, "settings", "precision_bf16",
                     float(str(retriever.scorer.dtype) == "torch.bfloat16"), 0, "val"))
    if system == "upr-zero-shot":
        rows += _depth_rows(system, retriever, questions, by_id, DEPTHS, shipped)
        rows += _depth_rows("upr-zero-shot-smollm2", retriever, gemma_questions, by_id,
                            (COMPARE_DEPTH,), COMPARE_DEPTH)
        rows += _two_stage_latency(system, retriever, latency, DEPTHS)
        rows += _naive_latency(retriever, latency[:10], COMPARE_DEPTH)
        rows += _robustness(system, CachedSearch(retriever), robust, by_id, 5)
    elif system == "upr-zero-shot-gemma":
        rows += _depth_rows(system, retriever, gemma_questions, by_id, (COMPARE_DEPTH,),
                            COMPARE_DEPTH)
        rows += _two_stage_latency(system, retriever, latency[:10], (COMPARE_DEPTH,))
    elif system == "upr-zero-shot-minilm":
        rows += _depth_rows(system, retriever, questions, by_id, (COMPARE_DEPTH,), COMPARE_DEPTH)
    else:  # a trained system at its own depth
        rows += _depth_rows(system, retriever, questions, by_id, (shipped,), shipped)
        rows += _two_stage_latency(system, retriever, latency, (shipped,))
        rows += _robustness(system, CachedSearch(retriever), robust, by_id, 5)
    return rows


def evaluate_system(system: str, data: str | None, sample: int, gemma_sample: int,
                    robustness_sample: int, latency_queries: int,
                    system_dir: str | None) -> list[dict]:
    """Every row of one system (runs in a child process, so peak RSS is its own)."""
    from invar_rag_integrations.evaluation import odqa_corpus

    corpus = odqa_corpus(data)
    by_id = {p.id: p for p in corpus}
    questions = sampled_questions(data, sample)
    robust = sampled_questions(data, robustness_sample)
    gemma_questions = sampled_questions(data, gemma_sample)
    latency = random.Random(0).sample([q.question for q in questions], latency_queries)
    if system in BASELINES:
        rows = _baseline(system, data, questions, by_id, corpus, robust, latency)
    else:
        rows = _two_stage(system, data, questions, by_id, corpus, robust, latency,
                          gemma_questions, system_dir)
    rows.append(_peak_rss_row(system, len(corpus)))
    return rows


def merge_rows(path: Path, rows: list[dict]) -> list[dict]:
    """``rows`` plus the earlier rows of ``path`` for systems not run now."""
    if not path.is_file():
        return rows
    ran = {r["system"].split("-k")[0] for r in rows} | {r["system"] for r in rows}
    kept = [r for r in json.loads(path.read_text())["rows"]
            if r["system"] not in ran and r["system"].split("-k")[0] not in ran]
    return kept + rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data-dir", help="folder with odqa/ (default: $INVAR_RAG_DATA or "
                                           "../shared/data)")
    everything = [*BASELINES, *ZERO_SHOT, *INVAR_SYSTEMS]
    parser.add_argument("--systems", nargs="+", default=[*BASELINES, *ZERO_SHOT],
                        choices=everything,
                        help="default: the baselines and the zero-shot retrievers; the trained "
                             f"Invar systems ({', '.join(INVAR_SYSTEMS)}) are trained first")
    parser.add_argument("--config", type=Path, default=CONFIG,
                        help="training config of the Invar systems")
    parser.add_argument("--sample", type=int, default=100,
                        help="val questions per dataset (the same for every system)")
    parser.add_argument("--gemma-sample", type=int, default=30)
    parser.add_argument("--robustness-sample", type=int, default=20)
    parser.add_argument("--latency-queries", type=int, default=20)
    args = parser.parse_args(argv)
    from benchmarks.run import save_and_render

    train_systems([s for s in args.systems if s in INVAR_SYSTEMS], args.config)
    rows: list[dict] = []
    for system in args.systems:
        print(f"== {system}", file=sys.stderr, flush=True)
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            rows += pool.submit(evaluate_system, system, args.data_dir, args.sample,
                                args.gemma_sample, args.robustness_sample,
                                args.latency_queries,
                                str(SYSTEMS_DIR / system) if system in INVAR_SYSTEMS
                                else None).result()
    rows = merge_rows(RESULTS / "retriever_stage.json", rows)
    save_and_render("retriever_stage", rows, "benchmarks.retriever_stage", argv)


if __name__ == "__main__":
    main()
