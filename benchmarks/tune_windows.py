"""Choose how the scorer reads long nodes, on the tuning slice of the training questions (never
validation): ``python -m benchmarks.tune_windows``.

For each chunking (the shared corpus's articles cut by a framework splitter, and the 100-word
passages as the control), the tuning questions' stage-1 candidates (the shipped stage 1, top
``--depth``) are read once in every window, for each window length; the scores are cached per
(question, window), so a re-run or an added policy reads nothing again. Every reading policy is
then computed from those window scores:

- which windows the LM reads of a node: all of them, or the best ``m`` by BM25 against the
  question (``bm25``), or the first ``m`` (``first``: ``m = 1`` is today's reading of the first
  window);
- how their scores become the node's ``r``: ``first``, ``max`` (MaxP), ``mean``, ``softmax``
  (``T log mean exp(r / T)``);

fused as the shipped retriever fuses (``w * cos / tau + r + w_bm25 * bm25``), with its cost:
the LM tokens read per query. Writes ``benchmarks/results/window_tuning.json`` (Acc@1/5 per
dataset, ``tokens_per_query`` and ``windows_per_query`` for every policy and chunking) and
prints the best policy within the cost budget; the chosen values are ``ScorerSettings``'
defaults.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import dataclass

import numpy as np

from benchmarks.run import DATASETS, _row

AGGREGATIONS = (("first", 1.0), ("max", 1.0), ("mean", 1.0), ("softmax", 0.1),
                ("softmax", 0.3), ("softmax", 1.0))
SELECTIONS = (("all", 0), ("first", 1), ("first", 2), ("bm25", 1), ("bm25", 2), ("bm25", 3))
LONG = ("llama-512", "llama-1024")  # where the choice is made (squad and popqa_longtail)


@dataclass
class Read:
    """One question's candidates read in every window of one window length."""

    r: list[np.ndarray]       # per candidate, every window's score
    tokens: list[np.ndarray]  # per candidate, every window's tokens as the LM reads them
    chosen: dict[tuple[str, int], list[list[int]]]  # per selection, per candidate: windows read
    hits: list[bool]          # per candidate, whether it holds an answer
    cosine: np.ndarray        # stage 1's cosine of each candidate
    bm25: np.ndarray          # the BM25 term of each candidate


def read_all_windows(retriever, questions, size: int, by_id, show_progress: bool) -> list[Read]:
    """Score every window of every candidate (cached per question and window), and note which
    windows each selection reads (chosen as serving chooses them, ``windows_to_read``)."""
    from invar_rag_integrations.evaluation.metrics import has_answer
    from invar_rag_integrations.invar.windows import windows_to_read
    from invar_rag_integrations.retrieval.embedding_cache import cached_embeddings

    scorer = retriever.scorer
    stride = max(1, size * 3 // 4)
    texts = [q.question for q in questions]
    proposed = retriever.candidates(texts)
    query_coarse = retriever.reranker.coarse(texts)
    cosines = retriever.passage_cosines(query_coarse, [p.ids for p in proposed])
    bm25 = retriever.bm25_term(texts, [p.ids for p in proposed])
    frame = len(scorer.tokens.bos + scorer.tokens.head + scorer.tokens.tail)
    keys, plan = [], []
    for q, found in zip(questions, proposed):
        nodes = [scorer.tokens.node(by_id[i]) for i in found.ids]
        windows = [n.windows(size, stride) if not n.empty else [] for n in nodes]
        length = frame + len(scorer.tokens.question(q.question))
        chosen = {}
        for kind, m in SELECTIONS:
            read, _ = windows_to_read(q.question, nodes, size, stride, m or 10**9,
                                      "bm25" if kind == "bm25" else "none",
                                      scorer.tokenizer.decode)
            chosen[kind, m] = [[ws.index(w) for w in got] for ws, got in zip(windows, read)]
        plan.append((windows, [np.array([len(w) + length for w in ws]) for ws in windows],
                     chosen, [has_answer(q.answers, by_id[i].full_text()) for i in found.ids]))
        keys += [json.dumps([q.question, w]) for ws in windows for w in ws]

    def score(batch: list[str]) -> np.ndarray:
        pairs = [json.loads(k) for k in batch]
        return scorer.window_scores([q for q, _ in pairs], [w for _, w in pairs])[:, None]

    identity = f"window-scores:{retriever.identity()}:{scorer.dtype}"
    flat, _ = cached_embeddings(keys, identity, score, chunk_size=256,
                                show_progress=show_progress)
    reads, start = [], 0
    for (windows, tokens, chosen, hits), cos, b in zip(plan, cosines, bm25):
        r = []
        for ws in windows:
            r.append(flat[start : start + len(ws), 0])
            start += len(ws)
        reads.append(Read(r, tokens, chosen, hits, cos, b))
    return reads


def policy_rows(name: str, questions, reads: list[Read], selection: tuple[str, int],
                aggregation: tuple[str, float], settings) -> list[dict]:
    """Acc@1/5 per dataset, tokens and windows read per query, of one reading policy."""
    import torch

    from invar_rag_integrations.invar import settings_score
    from invar_rag_integrations.invar.early_stop import UNSCORED
    from invar_rag_integrations.invar.windows import aggregate

    method, temperature = aggregation
    hits_at, tokens, windows = [], [], []
    for read in reads:
        r = np.full(len(read.r), UNSCORED, dtype=np.float32)
        spent = count = 0
        for c, (scores, lengths, chosen) in enumerate(zip(read.r, read.tokens,
                                                          read.chosen[selection])):
            if not chosen:
                continue
            r[c] = float(aggregate(torch.from_numpy(scores[chosen]), method, temperature))
            spent += int(lengths[chosen].sum())
            count += len(chosen)
        s = settings_score(settings, r, read.cosine, read.bm25)
        ranked = np.argsort(-s, kind="stable")
        hits_at.append([read.hits[i] for i in ranked])
        tokens.append(spent)
        windows.append(count)
    rows = []
    for dataset in DATASETS:
        mine = [h for q, h in zip(questions, hits_at) if q.dataset == dataset]
        for k in (1, 5):
            rows.append(_row(name, dataset, f"acc@{k}", float(np.mean([any(h[:k]) for h in mine])),
                             len(mine), "tune"))
    rows += [_row(name, "all", "tokens_per_query", float(np.mean(tokens)), len(reads), "tune"),
             _row(name, "all", "windows_per_query", float(np.mean(windows)), len(reads), "tune")]
    return rows


def choose(rows: list[dict], budget: float) -> tuple[str, float]:
    """The policy with the best mean Acc@1 over squad and popqa_longtail on the long
    chunkings, among those that read at most ``budget`` tokens per query on every chunking and
    keep the passages' mean Acc@1 within .01 of the first-window reading."""
    def value(policy: str, chunking: str, dataset: str, metric: str = "acc@1") -> float:
        return next(r["value"] for r in rows if r["system"] == policy
                    and r["chunking"] == chunking and r["dataset"] == dataset
                    and r["metric"] == metric)

    policies = list(dict.fromkeys(r["system"] for r in rows))
    chunkings = list(dict.fromkeys(r["chunking"] for r in rows))
    first = next(p for p in policies if p.endswith("-first1-first"))
    best = None
    for policy in policies:
        if any(value(policy, c, "all", "tokens_per_query") > budget for c in chunkings):
            continue
        if "passages" in chunkings and any(
                value(policy, "passages", d) < value(first, "passages", d) - 0.01
                for d in DATASETS):
            continue
        mean = float(np.mean([value(policy, c, d) for c in LONG if c in chunkings
                              for d in ("squad", "popqa_longtail")]))
        if best is None or mean > best[1]:
            best = (policy, mean)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data-dir", help="folder with odqa/ (default: $INVAR_RAG_DATA or "
                                           "../shared/data)")
    parser.add_argument("--chunkings", nargs="+", default=["passages", *LONG])
    parser.add_argument("--per-dataset", type=int, nargs=3, default=[20, 40, 40],
                        metavar=("NQ", "POPQA", "SQUAD"),
                        help="tuning questions per dataset (nq is the short-passage control)")
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--windows", type=int, nargs="+", default=[128],
                        help="window lengths in tokens (max_passage_tokens)")
    parser.add_argument("--budget", type=float, default=3.0,
                        help="tokens per query at most this many times the first-128-token "
                             "reading's on the passages")
    args = parser.parse_args(argv)
    from benchmarks.run import save_and_render
    from invar_rag_integrations.evaluation import odqa_questions
    from invar_rag_integrations.evaluation.chunking import chunked_corpus
    from invar_rag_integrations.evaluation.qa_eval import sample_per_dataset
    from invar_rag_integrations.invar import InvarSettings, TwoStageRetriever

    questions = []
    for dataset, count in zip(DATASETS, args.per_dataset):
        questions += sample_per_dataset(odqa_questions("tune", [dataset], data=args.data_dir),
                                        count, seed=0)
    retriever = TwoStageRetriever.zero_shot(settings=InvarSettings(candidates=args.depth),
                                         show_progress=False)
    rows: list[dict] = []
    for chunking in args.chunkings:
        print(f"== {chunking}", file=sys.stderr, flush=True)
        corpus = chunked_corpus(chunking, args.data_dir)
        retriever.index(corpus)
        by_id = {p.id: p for p in corpus}
        for size in args.windows:
            reads = read_all_windows(retriever, questions, size, by_id, True)
            for selection, aggregation in itertools.product(SELECTIONS, AGGREGATIONS):
                if selection[1] == 1 and aggregation[0] != "first":
                    continue  # one window read: every aggregation is that window
                name = (f"w{size}-{selection[0]}{selection[1] or ''}-{aggregation[0]}"
                        + (f"{aggregation[1]}" if aggregation[0] == "softmax" else ""))
                found = policy_rows(name, questions, reads, selection, aggregation,
                                    retriever.settings)
                rows += [{**row, "chunking": chunking} for row in found]
    first = [r for r in rows if r["system"] == f"w{min(args.windows)}-first1-first"
             and r["chunking"] == "passages" and r["metric"] == "tokens_per_query"]
    budget = args.budget * first[0]["value"] if first else float("inf")
    policy, mean = choose(rows, budget)
    print(f"chosen: {policy} (mean Acc@1 {mean:.3f} on squad and popqa_longtail of "
          f"{', '.join(c for c in LONG if c in args.chunkings)}; budget {budget:.0f} tokens "
          "per query)", file=sys.stderr)
    rows.append({**_row(policy, "all", "chosen", mean, len(questions), "tune"),
                 "chunking": "+".join(c for c in LONG if c in args.chunkings)})
    save_and_render("window_tuning", rows, "benchmarks.tune_windows", argv)


if __name__ == "__main__":
    main()
