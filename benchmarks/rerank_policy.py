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

from benchmarks.stage2_policy import Scored, add_split_flags, mean_acc1, rows_of, scored_splits

READ_FIRST = (2, 3)
MARGINS = (0.0, 0.5, 1.15, 2.0, 3.0, 5.0)  # 1.15: the retriever's default (early_stop.py)


def replay(scored: Scored, read_first: int, stop_margin: float) -> dict:
    """Acc@1/5 and pairs read per query when the reranker reads with this policy."""
    from invar_rag_integrations.invar.early_stop import read_until_clear

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_split_flags(parser)
    args = parser.parse_args(argv)
    from benchmarks.run import save_and_render

    policies = {"rerank-all": (args.depth, float("inf"))}
    for read_first in READ_FIRST:
        for margin in MARGINS:
            policies[f"rerank-read{read_first}-margin{margin:g}"] = (read_first, margin)
    rows = []
    for split, s in scored_splits(args)[2].items():
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
