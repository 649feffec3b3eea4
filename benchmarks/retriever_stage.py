"""Retrieval-stage benchmark: ``python -m benchmarks.retriever_stage`` (part of ``make bench``).

On the validation carve-out of the ODQA questions, in one run:
1. trains (or reuses, when already complete) the CPU-config retriever and its ablations
   ``invar-no-invar`` (``use_invar=false``) and ``invar-no-align`` (``use_align=false``),
   sharing one LSR cache, into ``benchmarks/systems/``;
2. Acc@1/5/20 per dataset for BM25, MiniLM, their RRF fusion, the three Invar systems and the
   full system's LM score alone (``invar-lm-only``: fusion weight beta = 0);
3. robustness: Acc@5 on every seeded rewrite kind and the mean top-5 Jaccard overlap with the
   original query's top-5 (BM25, MiniLM, RRF, Invar);
4. speed: Invar indexing of the whole corpus from cached MiniLM vectors (LM part uncached),
   single-query latency p50/p95, training examples/s and LSR prompts/s, peak RSS.
Each system is evaluated in its own process. Writes ``benchmarks/results/retriever_stage.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from benchmarks.run import DATASETS, ROOT, _latency_rows, _peak_rss_row, _row

SYSTEMS_DIR = ROOT / "benchmarks" / "systems"
CONFIG = ROOT / "training" / "configs" / "retriever_smollm2_cpu.json"
INVAR_SYSTEMS = {"invar": [], "invar-no-invar": ["--use_invar", "false"],
                 "invar-no-align": ["--use_align", "false"]}
LM_ONLY = "invar-lm-only"  # the full system's LM score alone (fusion weight beta = 0)
BASELINES = ("bm25", "minilm", "rrf")
ROBUSTNESS = ("bm25", "minilm", "rrf", "invar")


def train_systems(names: list[str], config: Path) -> None:
    """Train each Invar system whose directory is not complete (the driver resumes)."""
    for name in names:
        folder = SYSTEMS_DIR / name
        if (folder / "invar_rag.json").is_file() and (folder / "index").is_dir():
            print(f"== {name}: reusing {folder}", file=sys.stderr, flush=True)
            continue
        print(f"== training {name}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "training.train_retriever", str(config),
                        "--output_dir", str(folder),
                        "--lsr_cache_dir", str(SYSTEMS_DIR / "lsr_cache"),
                        *INVAR_SYSTEMS[name]], cwd=ROOT, check=True)


def _jaccard(a: list[str], b: list[str]) -> float:
    union = set(a) | set(b)
    return len(set(a) & set(b)) / len(union) if union else 1.0


def _robustness_rows(system: str, retriever, questions, by_id, original) -> list[dict]:
    from invar_rag_integrations.evaluation.retrieval_eval import (
        accuracy_rows,
        hit_ranks,
        search_all,
    )
    from training.query_variants import REWRITE_KINDS, rewrite

    rows = []
    for kind in REWRITE_KINDS:
        queries = [rewrite(q.question, kind, seed=0) for q in questions]
        results = search_all(retriever, queries, 5, desc=f"{system} {kind}")
        rows += accuracy_rows(system, "val", questions, hit_ranks(questions, results, by_id),
                              (5,), suffix=f":{kind}")
        overlaps = [_jaccard(o.ids[:5], r.ids[:5]) for o, r in zip(original, results)]
        rows.append(_row(system, "all", f"jaccard@5:{kind}", sum(overlaps) / len(overlaps),
                         len(overlaps), "val"))
    return rows


def evaluate_system(system: str, data: str | None, latency_queries: int) -> list[dict]:
    """Accuracy, robustness, latency and peak RSS of one system (runs in a child process)."""
    from invar_rag_integrations.evaluation import odqa_corpus, odqa_questions
    from invar_rag_integrations.evaluation.retrieval_eval import (
        accuracy_rows,
        hit_ranks,
        search_all,
    )
    from invar_rag_integrations.paths import cache_dir
    from invar_rag_integrations.retrieval import InvarRetriever, make_retriever

    corpus = odqa_corpus(data)
    by_id = {p.id: p for p in corpus}
    questions = odqa_questions("val", DATASETS, data=data)
    rows: list[dict] = []
    if system in BASELINES:
        retriever = make_retriever(system)
        retriever.index(corpus)
    elif system == LM_ONLY:
        retriever = InvarRetriever.from_pretrained(SYSTEMS_DIR / "invar")
        retriever.beta = 0.0
    else:
        retriever = InvarRetriever.from_pretrained(SYSTEMS_DIR / system)
        manifest = json.loads((SYSTEMS_DIR / system / "invar_rag.json").read_text())
        metrics = manifest["metrics"]["retriever"]
        rows.append(_row(system, "train", "train_examples_per_s",
                         metrics["train_samples_per_second"], metrics["train_examples"]))
        if metrics.get("lsr_computed"):  # this run scored prompts (others reuse its cache)
            rows.append(_row(system, "train", "lsr_prompts_per_s",
                             metrics["lsr_computed"] / metrics["lsr_seconds"],
                             metrics["lsr_computed"]))
        rows.append(_row(system, "train", "fusion_beta",
                         manifest["retriever"]["settings"]["beta"], metrics["train_examples"]))
        if system == "invar":  # index the corpus again with an empty LM-vector cache
            with tempfile.TemporaryDirectory(prefix="invar-index-") as fresh:
                coarse = cache_dir() / "embeddings"
                os.environ["INVAR_RAG_CACHE"] = fresh
                (Path(fresh) / "embeddings").symlink_to(coarse)  # MiniLM vectors stay cached
                started = time.perf_counter()
                retriever.index(corpus)
                seconds = time.perf_counter() - started
            rows += [_row(system, "odqa-corpus", "index_s", seconds, len(corpus)),
                     _row(system, "odqa-corpus", "passages_per_s", len(corpus) / seconds,
                          len(corpus))]
    results = search_all(retriever, [q.question for q in questions], 20, desc=system)
    rows += accuracy_rows(system, "val", questions, hit_ranks(questions, results, by_id))
    if system in ROBUSTNESS:
        rows += _robustness_rows(system, retriever, questions, by_id, results)
    picked = random.Random(0).sample([q.question for q in questions], latency_queries)
    rows += _latency_rows(system, retriever, picked, split="val")
    rows.append(_peak_rss_row(system, len(corpus)))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data-dir", help="folder with odqa/ (default: $INVAR_RAG_DATA or "
                                           "../shared/data)")
    parser.add_argument("--systems", nargs="+", default=[*BASELINES, *INVAR_SYSTEMS, LM_ONLY],
                        choices=[*BASELINES, *INVAR_SYSTEMS, LM_ONLY])
    parser.add_argument("--config", type=Path, default=CONFIG,
                        help="training config of the Invar systems")
    parser.add_argument("--latency-queries", type=int, default=100)
    args = parser.parse_args(argv)
    from benchmarks.run import save_and_render

    needed = {"invar" if s == LM_ONLY else s for s in args.systems}
    train_systems([s for s in INVAR_SYSTEMS if s in needed], args.config)
    rows: list[dict] = []
    for system in args.systems:
        print(f"== evaluating {system}", file=sys.stderr, flush=True)
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            rows += pool.submit(evaluate_system, system, args.data_dir,
                                args.latency_queries).result()
    save_and_render("retriever_stage", rows, "benchmarks.retriever_stage", argv)


if __name__ == "__main__":
    main()
