"""Benchmark command: ``python -m benchmarks.run`` (``make bench``).

Measures, in one run on this machine, the baselines on the ODQA dev questions:
1. Acc@1/5/20 per dataset (nq, popqa_longtail, squad) for BM25, MiniLM and their
   reciprocal-rank fusion (RRF, k=60, top-100 of each);
2. indexing speed over the 14k corpus (MiniLM: uncached throughput on a seeded sample beside a
   plain ``SentenceTransformer.encode`` of the same passages, and a cached re-index);
3. single-query latency p50/p95 (encode + search) and each system's peak RSS.
Each system runs in its own process so its peak RSS is its own. Writes
``benchmarks/results/baselines.json`` and re-renders ``BENCHMARKS.md`` from every results file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from invar_rag_integrations.evaluation.results import pivot_table

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DATASETS = ("nq", "popqa_longtail", "squad")


def _row(system: str, dataset: str, metric: str, value: float, n: int, split: str = "dev"):
    return {"system": system, "split": split, "dataset": dataset, "metric": metric,
            "value": value, "n": n}


def _latency_rows(system: str, retriever, queries: list[str], split: str = "dev") -> list[dict]:
    retriever.search(queries[:5], k=20)  # warm up
    times = []
    for query in queries:
        started = time.perf_counter()
        retriever.search([query], k=20)
        times.append((time.perf_counter() - started) * 1000)
    cuts = statistics.quantiles(times, n=20)
    measured_on = f"{split}-queries"
    return [_row(system, measured_on, "latency_p50_ms", statistics.median(times), len(times),
                 split),
            _row(system, measured_on, "latency_p95_ms", cuts[18], len(times), split)]


def _peak_rss_row(system: str, n: int) -> dict:
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return _row(system, "odqa-corpus", "peak_rss_mb", peak_kib / 1024, n)


def run_system(system: str, data: str | None, latency_queries: int, sample: int) -> list[dict]:
    """Index the corpus, evaluate and time one system (runs in a child process)."""
    from invar_rag_integrations.evaluation import evaluate_retrieval, odqa_corpus, odqa_questions
    from invar_rag_integrations.training.catalog import make_retriever

    corpus = odqa_corpus(data)
    by_id = {p.id: p for p in corpus}
    questions = odqa_questions("dev", DATASETS, data=data)
    rows: list[dict] = []
    if system == "minilm":
        indexing_rows, retriever = _minilm_indexing(corpus, sample)
        rows += indexing_rows
    else:  # rrf reuses the MiniLM corpus embeddings cached by the minilm run
        retriever = make_retriever(system)
        started = time.perf_counter()
        retriever.index(corpus)
        seconds = time.perf_counter() - started
        if system == "bm25":
            rows.append(_row(system, "odqa-corpus", "index_s", seconds, len(corpus)))
            rows.append(_row(system, "odqa-corpus", "passages_per_s", len(corpus) / seconds,
                             len(corpus)))
    rows += evaluate_retrieval(retriever, questions, by_id, "dev", system=system)
    picked = random.Random(0).sample([q.question for q in questions], latency_queries)
    rows += _latency_rows(system, retriever, picked)
    rows.append(_peak_rss_row(system, len(corpus)))
    return rows


def _minilm_indexing(corpus, sample: int) -> tuple[list[dict], object]:
    """Throughput rows (uncached sample vs plain encode, full corpus, cached re-index) and the
    indexed MiniLM retriever."""
    from invar_rag_integrations.models import load_coarse_encoder
    from invar_rag_integrations.retrieval import DenseRetriever

    encoder = load_coarse_encoder("minilm")
    subset = random.Random(0).sample(corpus, min(sample, len(corpus)))
    texts = [p.full_text() for p in subset]
    encoder.encode(texts[:64], batch_size=64)  # warm up
    started = time.perf_counter()
    encoder.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=True)
    plain = len(texts) / (time.perf_counter() - started)
    ours = DenseRetriever(encoder, use_cache=False)
    started = time.perf_counter()
    ours.index(subset)
    uncached = len(texts) / (time.perf_counter() - started)

    full = DenseRetriever(encoder)
    started = time.perf_counter()
    full.index(corpus)  # computes and caches the corpus embeddings unless already cached
    first_s = time.perf_counter() - started
    first_cached = full.last_index_cached
    again = DenseRetriever(encoder)
    started = time.perf_counter()
    again.index(corpus)
    cached_s = time.perf_counter() - started
    n = len(corpus)
    rows = [
        _row("plain-st-encode", "odqa-sample", "passages_per_s", plain, len(texts)),
        _row("minilm", "odqa-sample", "passages_per_s", uncached, len(texts)),
        _row("minilm", "odqa-sample", "throughput_vs_plain_st", uncached / plain, len(texts)),
        _row("minilm", "odqa-corpus", "cached_reindex_s", cached_s, n),
    ]
    if not first_cached:  # a real uncached full-corpus index happened in this run
        rows += [_row("minilm", "odqa-corpus", "index_s", first_s, n),
                 _row("minilm", "odqa-corpus", "passages_per_s", n / first_s, n)]
    return rows, again


# --- BENCHMARKS.md ---------------------------------------------------------------------------

_QUALITY = ["acc@1", "acc@5", "acc@10", "acc@20"]
_SPEED = ["index_s", "passages_per_s", "throughput_vs_plain_st", "cached_reindex_s",
          "latency_p50_ms", "latency_p95_ms", "peak_rss_mb", "train_s", "train_examples_per_s",
          "lsr_prompts_per_s", "cos_weight", "precision_bf16", "tokens_per_s",
          "s_per_question", "same_answers", "pairs_per_s", "engine_start_s", "pass_rate",
          "questions", "passages", "passages_per_s", "questions_per_s"]
_ANSWERS = ["em", "f1"]


def _robustness_tables(rows: list[dict]) -> list[str]:
    """Acc@5 per rewrite kind (per dataset) and top-5 Jaccard with the original query."""
    kinds = list(dict.fromkeys(r["metric"].split(":", 1)[1] for r in rows
                               if r["metric"].startswith("jaccard@5:")))
    if not kinds:
        return []
    systems = list(dict.fromkeys(r["system"] for r in rows if r["metric"].startswith("jaccard")))
    return ["### Robustness to query rewrites", "",
            "Acc@5 on the original questions and on each seeded rewrite kind (the same sampled "
            "questions):", "",
            pivot_table(rows, ["acc@5:original", *[f"acc@5:{k}" for k in kinds]], systems), "",
            "Mean Jaccard overlap of the rewrite's top-5 with the original query's top-5:", "",
            pivot_table(rows, [f"jaccard@5:{k}" for k in kinds], systems, ["all"]), ""]


def _curve_tables(rows: list[dict]) -> list[str]:
    """Tuning-slice Acc@1 of each trained system at each checkpoint (epoch or step 0 = its
    untrained start)."""
    curves = [r for r in rows if r["split"] == "tune" and r["metric"].startswith("tune_acc@1:")]
    if not curves:
        return []
    parts = ["### Learning curves (tuning slice of the training questions, Acc@1)", ""]
    for system in dict.fromkeys(r["system"] for r in curves):
        mine = [r for r in curves if r["system"] == system]
        points = list(dict.fromkeys(r["metric"] for r in mine))
        parts += [f"{system}:", "", pivot_table(mine, points), ""]
    return parts


def _chunking_tables(rows: list[dict]) -> list[str]:
    """Rows that carry a ``chunking`` (long-document results): Acc@1 / Acc@5 per system and
    dataset with one column per chunking, then the cost columns per system."""
    chunkings = list(dict.fromkeys(r["chunking"] for r in rows))
    relabelled = [{**r, "metric": f"{r['metric']} {r['chunking']}"} for r in rows]
    parts = []
    for metric in ("acc@1", "acc@5"):
        columns = [f"{metric} {c}" for c in chunkings]
        if any(r["metric"] in columns for r in relabelled):
            parts += [f"### {metric.capitalize()} by chunking", "",
                      pivot_table([r for r in relabelled if r["metric"] in columns], columns),
                      ""]
    costs = [m for m in ("tokens_per_query", "windows_per_query", "latency_p50_ms",
                         "latency_p95_ms") if any(r["metric"] == m for r in rows)]
    for metric in costs:
        columns = [f"{metric} {c}" for c in chunkings]
        parts += [f"### {metric} by chunking", "",
                  pivot_table([r for r in relabelled if r["metric"] in columns], columns), ""]
    return parts


_CALIBRATION = ["ece", "brier", "auroc_relevant"]
_RANKING = ["acc@1", "wins_vs_fused", "losses_vs_fused", "wins_vs_minilm", "losses_vs_minilm",
            "pairs_per_query"]


def _calibration_tables(rows: list[dict]) -> list[str]:
    """Calibration errors per chunking (val pairs), the cross-fitted errors on the tuning
    pairs, and the rankings by fused score and by probability."""
    parts = []
    for chunking in dict.fromkeys(r["chunking"] for r in rows if r["split"] == "val"):
        mine = [r for r in rows if r["chunking"] == chunking and r["split"] == "val"]
        parts += [f"### Relevance probabilities on {chunking} (every stage-1 candidate of the "
                  "val questions)", "", pivot_table(mine, _CALIBRATION), ""]
        ranked = [r for r in mine if r["metric"] in _RANKING]
        if ranked:
            parts += [f"### Ranking by fused score and by probability ({chunking}, val "
                      "questions; paired wins / losses)", "", pivot_table(ranked, _RANKING), ""]
    tune = [r for r in rows if r["split"] == "tune"]
    if tune:
        parts += ["### Cross-fitted on the tuning pairs (5 folds by question)", "",
                  pivot_table(tune, [f"cross_fitted_{m}" for m in _CALIBRATION]), ""]
    return parts


_ABSTENTION = ["auroc_unanswerable", "declined_unanswerable", "correct_kept", "answered",
               "em_answered", "threshold"]
_PAIRED = ["declined_only_here", "declined_only_by_relevance", "kept_only_here",
           "kept_only_by_relevance"]
_EXCLUDED = ["excluded_answer_word_in_question", "excluded_answer_in_no_passage",
             "excluded_answer_in_too_many", "kept", "answerable", "unanswerable", "correct"]


def _abstention_tables(rows: list[dict]) -> list[str]:
    """The question sets, the abstention figures at the stored threshold, each signal's AUROC
    and the coverage curve, per split."""
    parts = []
    for split in ("val", "tune"):
        mine = [r for r in rows if r["split"] == split]
        decided = [r for r in mine if r["metric"] in _ABSTENTION + _PAIRED
                   and not r["system"].startswith("signal:")]
        parts += [f"### Questions ({split}): excluded per rule, kept, answerable (answer in the "
                  "top k over the full corpus), unanswerable (over the corpus without their "
                  "answers)", "", pivot_table(mine, _EXCLUDED), "",
                  f"### Abstention at the threshold fitted on tune ({split} questions)", "",
                  pivot_table(decided, _ABSTENTION + _PAIRED), "",
                  f"### Each signal alone: AUROC answerable vs unanswerable ({split})", "",
                  pivot_table([r for r in mine if r["system"].startswith("signal:")],
                              ["auroc_unanswerable"]), ""]
        coverage = sorted({r["metric"] for r in mine if r["metric"].startswith("em@coverage")})
        if coverage:
            parts += [f"### EM of the answered questions against the share answered ({split}; "
                      "most confident first, answerable and unanswerable together)", "",
                      pivot_table(mine, coverage), ""]
        timed = [r for r in mine if r["metric"] == "s_per_question"]
        if timed:
            parts += [f"### Seconds per question answered, without and with deciding ({split}; "
                      "retrieval excluded)", "", pivot_table(timed, ["s_per_question"]), ""]
    return parts


_PASSAGE_CACHE = ["hit_rate", "all_hit_queries", "latency_p50_ms", "latency_p95_ms",
                  "hit_speedup", "same_top5", "max_score_diff", "mb_per_passage", "cached_mb",
                  "evictions"]
_SERVICE = ["pairs_per_s", "pairs_per_s_vs_inprocess", "requests_per_s", "latency_p50_ms",
            "latency_p95_ms", "latency_p99_ms", "errors", "same_order", "same_top1"]


def render_markdown(results_dir: Path = RESULTS) -> str:
    """BENCHMARKS.md from every ``benchmarks/results/*.json`` file."""
    parts = ["# Benchmarks", "",
             "Generated by `make bench` (`python -m benchmarks.run`) from "
             "`benchmarks/results/*.json`; do not edit by hand.", ""]
    for path in sorted(results_dir.glob("*.json")):
        payload = json.loads(path.read_text(encoding="utf-8"))
        rows = payload["rows"]
        parts += [f"## {path.stem}", "",
                  f"- command: `{payload['command']}`",
                  f"- commit: `{payload['git_commit']}`, date: {payload['date']}",
                  f"- machine: {payload['machine']}", ""]
        if any(r["metric"] == "wins_vs_plain" for r in rows):
            parts += ["### Acc@k with paired Acc@1 wins and losses against the plain prompt "
                      "(val questions)", "",
                      pivot_table(rows, ["acc@1", "acc@5", "wins_vs_plain", "losses_vs_plain",
                                         "ece_top5", "brier_top5", "pairs_per_query",
                                         "s_per_query"]), ""]
            continue
        if any(r["metric"] == "declined_unanswerable" for r in rows):
            parts += _abstention_tables(rows)
            continue
        if any(r["metric"] == "ece" for r in rows):
            parts += _calibration_tables(rows)
            continue
        if any("chunking" in r for r in rows):
            parts += _chunking_tables(rows)
            continue
        if any(r["metric"] == "pairs_per_query" for r in rows):
            for split in dict.fromkeys(r["split"] for r in rows
                                       if r["metric"] == "pairs_per_query"):
                parts += [f"### Acc@k against pairs read per query ({split} questions)", "",
                          pivot_table([r for r in rows if r["split"] == split],
                                      ["acc@1", "acc@5", "pairs_per_query", "latency_p50_ms",
                                       "latency_p95_ms"]), ""]
            parts += _curve_tables(rows)
            trained = [r for r in rows if r["metric"] == "train_s"]
            if trained:
                parts += ["### Training time", "", pivot_table(trained, ["train_s"]), ""]
            continue
        if any(r["metric"] == "hit_rate" for r in rows):
            parts += ["### Passage cache: hits, latency and exactness", "",
                      pivot_table(rows, _PASSAGE_CACHE), ""]
            continue
        if any(r["metric"] == "requests_per_s" for r in rows):
            parts += ["### Throughput and latency", "", pivot_table(rows, _SERVICE), ""]
            continue
        quality = [r for r in rows if r["metric"] in _QUALITY]
        if quality:
            split = quality[0]["split"]
            parts += [f"### Retrieval accuracy ({split} questions; has_answer token matching)", "",
                      pivot_table(quality, _QUALITY), ""]
        answers = [r for r in rows if r["metric"] in _ANSWERS]
        if answers:
            parts += [f"### Answer quality ({answers[0]['split']} questions; SQuAD EM / F1)", "",
                      pivot_table(answers, _ANSWERS), ""]
        parts += _robustness_tables(rows)
        parts += _curve_tables(rows)
        speed = [r for r in rows if r["metric"] in _SPEED]
        if speed:
            parts += ["### Speed and memory", "",
                      "| system | measured on | metric | value | n |", "|---|---|---|---:|---:|"]
            parts += [f"| {r['system']} | {r['dataset']} | {r['metric']} | {r['value']:.3f} | "
                      f"{r['n']} |" for r in speed]
            parts += [""]
    return "\n".join(parts)


def save_and_render(name: str, rows: list[dict], module: str, argv: list[str] | None,
                    earlier: str | None = None) -> None:
    """Write ``results/<name>.json`` with the command that made it (after ``earlier``, the
    command of rows kept from a previous run); re-render BENCHMARKS.md."""
    from invar_rag_integrations.evaluation.results import write_results

    command = f"python -m {module} " + " ".join(argv if argv is not None else sys.argv[1:])
    if earlier:
        command = f"{earlier}; then {command.strip()}"
    print(f"wrote {write_results(RESULTS / f'{name}.json', rows, command.strip())}",
          file=sys.stderr)
    (ROOT / "BENCHMARKS.md").write_text(render_markdown() + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data-dir", help="folder with odqa/ (default: $INVAR_RAG_DATA or "
                                           "../shared/data)")
    parser.add_argument("--systems", nargs="+", default=["bm25", "minilm", "rrf"],
                        choices=["bm25", "minilm", "rrf"])
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--throughput-sample", type=int, default=2000,
                        help="passages encoded uncached for the throughput comparison")
    parser.add_argument("--fresh-cache", action="store_true",
                        help="use an empty embedding cache, so the full-corpus MiniLM index is "
                             "timed uncached (adds about 5 minutes on 2 cores)")
    parser.add_argument("--render-only", action="store_true",
                        help="only re-render BENCHMARKS.md from the results files")
    args = parser.parse_args(argv)
    if args.latency_queries < 2 or args.throughput_sample < 64:
        parser.error("--latency-queries must be >= 2 and --throughput-sample >= 64")
    if not args.render_only:
        rows: list[dict] = []
        with tempfile.TemporaryDirectory(prefix="invar-rag-bench-") as fresh:
            if args.fresh_cache:
                os.environ["INVAR_RAG_CACHE"] = fresh
            for system in args.systems:  # one fresh process per system: separate peak RSS
                print(f"== {system}", file=sys.stderr, flush=True)
                with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                    rows += pool.submit(run_system, system, args.data_dir, args.latency_queries,
                                        args.throughput_sample).result()
        save_and_render("baselines", rows, "benchmarks.run", argv)
    else:
        (ROOT / "BENCHMARKS.md").write_text(render_markdown() + "\n", encoding="utf-8")
    print((ROOT / "BENCHMARKS.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
