"""Long-document benchmark: ``python -m benchmarks.long_documents`` (part of ``make bench``).

The shared corpus's articles cut by the frameworks' own splitters (``evaluation.chunking``:
LlamaIndex's ``SentenceSplitter`` at 256, 512 and 1024 tokens, LangChain's
``RecursiveCharacterTextSplitter`` at 1000 and 4000 characters, default overlaps) and the
100-word passages as the control. On a seeded sample of the validation carve-out (the same
questions for every chunking and system; squad and popqa_longtail, nq as the short-passage
control), in one run, for every chunking:

1. stage 1 alone: ``bm25``, ``minilm`` (reading a node's first 256 word pieces),
   ``minilm-windows`` (every window of a node, its best window's cosine), ``rrf`` and
   ``rrf-windows`` (the fusion with BM25, which reads the whole node);
2. the zero-shot two-stage retriever at one candidate depth (``--candidates``) for every
   chunking: ``upr-zero-shot`` as shipped (long nodes read in windows, pre-selected and
   aggregated as ``ScorerSettings`` says) and ``upr-zero-shot-first128`` (the first 128 tokens
   of each node and MiniLM's first 256 word pieces: the reading before windows), with the LM
   windows read per query;
3. Acc@1/5/10 of each, and the latency p50/p95 of one query's whole search.

Rows carry a ``chunking`` field. Writes ``benchmarks/results/long_documents.json``.
"""

from __future__ import annotations

import argparse
import sys
import time

from benchmarks.retriever_stage import _latency_summary, _timed, sampled_questions
from benchmarks.run import _row

CHUNKINGS = ("passages", "llama-256", "llama-512", "llama-1024", "lc-1000", "lc-4000")
STAGE1 = ("bm25", "minilm", "minilm-windows", "rrf", "rrf-windows")
TWO_STAGE = ("upr-zero-shot", "upr-zero-shot-first128")
KS = (1, 5, 10)


def two_stage(name: str, depth: int):
    """The zero-shot two-stage retriever as shipped, or reading first windows only."""
    from invar_rag_integrations.invar import InvarSettings, TwoStageRetriever

    settings = InvarSettings(candidates=depth)
    if name.endswith("-first128"):
        settings = InvarSettings(candidates=depth, coarse_windows=False, max_passage_tokens=128,
                                 max_windows=1, preselect="none", window_aggregation="first")
    return TwoStageRetriever.zero_shot(settings=settings, show_progress=False)


def evaluate(name: str, retriever, questions, by_id, latency: list[str],
             chunking: str) -> list[dict]:
    """Acc@k, latency and (two-stage) the LM's windows per query, of an indexed retriever."""
    from benchmarks.retriever_stage import _accuracy, _search

    scorer = getattr(retriever, "scorer", None)
    if scorer is not None:
        scorer.window_counts.update(dict.fromkeys(scorer.window_counts, 0))
    results = _search(retriever, [q.question for q in questions], max(KS), f"{name} {chunking}")
    rows = _accuracy(name, questions, results, by_id, KS)
    if scorer is not None:
        counts = scorer.window_counts
        rows += [_row(name, "all", "windows_per_query", counts["windows_read"] / len(questions),
                      len(questions), "val"),
                 _row(name, "all", "nodes_read_in_part_per_query",
                      counts["nodes_read_in_part"] / len(questions), len(questions), "val")]
    rows += _latency_summary(name, _timed(lambda q: retriever.search([q], max(KS)), latency),
                             len(latency))
    return [{**row, "chunking": chunking} for row in rows]


def run_chunking(chunking: str, systems: list[str], data: str | None, sample: int,
                 latency_queries: int, depth: int) -> list[dict]:
    """Every row of one chunking (runs in a child process)."""
    import random

    from invar_rag_integrations.evaluation.chunking import chunked_corpus
    from invar_rag_integrations.training.catalog import make_retriever

    corpus = chunked_corpus(chunking, data)
    by_id = {p.id: p for p in corpus}
    questions = sampled_questions(data, sample)
    latency = random.Random(0).sample([q.question for q in questions], latency_queries)
    rows = [{**_row("corpus", "all", "nodes", len(corpus), len(corpus), "val"),
             "chunking": chunking}]
    for name in systems:
        print(f"== {chunking}: {name}", file=sys.stderr, flush=True)
        retriever = two_stage(name, depth) if name in TWO_STAGE else make_retriever(name, data)
        started = time.perf_counter()
        retriever.index(corpus)
        rows.append({**_row(name, "odqa-corpus", "index_s", time.perf_counter() - started,
                            len(corpus), "val"), "chunking": chunking})
        rows += evaluate(name, retriever, questions, by_id, latency, chunking)
    return rows


def merge_runs(path, rows: list[dict]) -> tuple[list[dict], str | None]:
    """``rows`` plus the earlier rows of ``path`` for (system, chunking) pairs not run now, and
    the command that measured those (``None`` when none are kept)."""
    import json

    if not path.is_file():
        return rows, None
    earlier = json.loads(path.read_text())
    ran = {(r["system"], r["chunking"]) for r in rows}
    kept = [r for r in earlier["rows"] if (r["system"], r["chunking"]) not in ran]
    return kept + rows, earlier["command"] if kept else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data-dir", help="folder with odqa/ (default: $INVAR_RAG_DATA or "
                                           "../shared/data)")
    parser.add_argument("--chunkings", nargs="+", default=list(CHUNKINGS), choices=CHUNKINGS)
    parser.add_argument("--systems", nargs="+", default=[*STAGE1, *TWO_STAGE],
                        choices=[*STAGE1, *TWO_STAGE])
    parser.add_argument("--sample", type=int, default=80,
                        help="val questions per dataset (the same for every chunking)")
    parser.add_argument("--candidates", type=int, default=10,
                        help="the two-stage retrievers' candidate depth, for every chunking")
    parser.add_argument("--latency-queries", type=int, default=20)
    args = parser.parse_args(argv)
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from benchmarks.run import RESULTS, save_and_render

    rows: list[dict] = []
    for chunking in args.chunkings:  # one process per chunking: its memory is returned
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            rows += pool.submit(run_chunking, chunking, args.systems, args.data_dir,
                                args.sample, args.latency_queries, args.candidates).result()
        # saved after every chunking, so an interrupted run keeps what it measured
        merged, earlier = merge_runs(RESULTS / "long_documents.json", rows)
        save_and_render("long_documents", merged, "benchmarks.long_documents", argv, earlier)


if __name__ == "__main__":
    main()
