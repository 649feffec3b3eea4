"""Early stop for the rerankers: ``python -m benchmarks.rerank_policy``.

A reranker (the LlamaIndex postprocessor, the LangChain compressor, the rerank service) reads
candidates that another retriever ordered. Here that retriever is RRF (BM25 + MiniLM) and its
top ``--depth`` candidates for the tuning slice of the training questions and for the val
questions; the scorer's ``r`` comes from ``benchmarks.stage2_policy``'s cache (computed when
missing) and is fused as a reranker fuses it (no BM25 term: a reranker has no corpus). The
rerankers' early stop (``read_first``, ``stop_margin``: ``early_stop.read_until_clear``, the
function the retriever runs) is replayed over a fixed grid (one read candidate has no
runner-up, so ``read_first`` starts at 2): Acc@1/5 and pairs read per query on both splits,
beside reading every candidate and the candidates' given order. Writes
``benchmarks/results/rerank_policy.json``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmarks.run import DATASETS, _row
from benchmarks.stage2_policy import Scored, score_split

READ_FIRST = (2, 3)
MARGINS = (0.0, 0.5, 1.15, 2.0, 3.0, 5.0)  # 1.15: the retriever's default (early_stop.py)


def replay(scored: Scored, read_first: int, stop_margin: float) -> dict:
    """Acc@1/5 and pairs read per query when the reranker reads with this policy."""
    from invar_rag_integrations.retrieval.early_stop import read_until_clear

    fused = scored.reranked
    read = np.zeros(len(fused))

    def score(picked: list[int], parts: list[slice]) -> list[np.ndarray]:
        for i, part in zip(picked, parts):
            read[i] += len(range(*part.indices(fused.shape[1])))
        return [fused[i][part] for i, part in zip(picked, parts)]

    found = read_until_clear([fused.shape[1]] * len(fused), read_first, stop_margin, score)
    orders = [np.argsort(-s, kind="stable") for s in found]
    return {"acc@1": np.array([scored.hits[i][o[0]] for i, o in enumerate(orders)]),
            "acc@5": np.array([scored.hits[i][o[:5]].any() for i, o in enumerate(orders)]),
            "pairs": read}


def mean_acc1(result: dict, scored: Scored) -> float:
    """Acc@1 averaged over the datasets (each counts the same)."""
    names = np.array(scored.datasets)
    return float(np.mean([result["acc@1"][names == d].mean() for d in DATASETS]))


def rows_of(system: str, split: str, scored: Scored, result: dict) -> list[dict]:
    names = np.array(scored.datasets)
    rows = []
    for dataset in DATASETS:
        mask = names == dataset
        for metric, values in (("acc@1", result["acc@1"]), ("acc@5", result["acc@5"]),
                               ("pairs_per_query", result["pairs"])):
            rows.append(_row(system, dataset, metric, float(values[mask].mean()),
                             int(mask.sum()), split))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data-dir", help="folder with odqa/ (default: $INVAR_RAG_DATA or "
                                           "../shared/data)")
    parser.add_argument("--tune-per-dataset", type=int, default=100)
    parser.add_argument("--val-per-dataset", type=int, default=100)
    parser.add_argument("--depth", type=int, default=10, help="candidates per query")
    args = parser.parse_args(argv)
    from benchmarks.run import save_and_render
    from invar_rag_integrations.evaluation import odqa_corpus, odqa_questions
    from invar_rag_integrations.evaluation.qa_eval import sample_per_dataset
    from invar_rag_integrations.paths import cache_dir
    from invar_rag_integrations.retrieval import InvarRetriever, InvarSettings

    corpus = odqa_corpus(args.data_dir)
    by_id = {p.id: p for p in corpus}
    retriever = InvarRetriever.zero_shot(settings=InvarSettings(candidates=args.depth),
                                         show_progress=False)
    retriever.index(corpus)
    policies = {"rerank-all": (args.depth, float("inf"))}
    for read_first in READ_FIRST:
        for margin in MARGINS:
            policies[f"rerank-read{read_first}-margin{margin:g}"] = (read_first, margin)
    rows = []
    for split, count in (("tune", args.tune_per_dataset), ("val", args.val_per_dataset)):
        questions = sample_per_dataset(odqa_questions(split, DATASETS, data=args.data_dir),
                                       count, seed=0)
        s = score_split(retriever, questions, by_id, args.depth, cache_dir() / "stage2_policy")
        given = {"acc@1": s.hits[:, 0], "acc@5": s.hits[:, :5].any(1),
                 "pairs": np.zeros(len(s.hits))}
        rows += rows_of("given-order-rrf", split, s, given)
        for name, (read_first, margin) in policies.items():
            result = replay(s, read_first, margin)
            rows += rows_of(name, split, s, result)
            print(f"{split} {name}: mean Acc@1 {mean_acc1(result, s):.3f}, pairs "
                  f"{result['pairs'].mean():.2f}", file=sys.stderr)
    save_and_render("rerank_policy", rows, "benchmarks.rerank_policy", argv)


if __name__ == "__main__":
    main()
