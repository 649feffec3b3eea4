"""Choose the zero-shot two-stage retriever's settings on the tuning slice of the training
questions (never validation): ``python -m benchmarks.tune_zero_shot``.

The tuning questions' stage-1 candidates (the union of RRF's and MiniLM's top ``--depth``) are
scored once with the zero-shot scorer; Acc@1/5 is then computed for each stage 1 (``rrf``,
``minilm``), depth (5, 10) and fusion weights of ``s = w * cos / tau + r + w_bm25 * bm25``
(the BM25 term with RRF only). The same slice
is scored again with cheaper scorers (a shorter passage cap, the first N layers of the LM) and,
where the scorer runs in bfloat16, in float32, to see whether they rank the same, with their
seconds per pair. Writes
``benchmarks/results/zero_shot_tuning.json``; the chosen values are ``InvarSettings``'
defaults.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import numpy as np

from benchmarks.run import DATASETS, _row

WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
BM25_WEIGHTS = (0.0, 0.5, 1.0, 2.0)


def _hits(questions, candidates, by_id) -> list[list[bool]]:
    from invar_rag_integrations.evaluation.metrics import has_answer

    return [[has_answer(q.answers, by_id[pid].full_text()) for pid in cands]
            for q, cands in zip(questions, candidates)]


def _accuracy_rows(system: str, questions, order_hits, ks=(1, 5)) -> list[dict]:
    rows = []
    for dataset in DATASETS:
        picked = [h for q, h in zip(questions, order_hits) if q.dataset == dataset]
        for k in ks:
            rows.append(_row(system, dataset, f"acc@{k}",
                             float(np.mean([any(h[:k]) for h in picked])), len(picked), "tune"))
    return rows


def _score(scorer, questions, candidates, by_id) -> tuple[list[np.ndarray], float]:
    """Each question's ``r`` over its candidates, and the seconds per pair."""
    from tqdm.auto import tqdm

    started, scores = time.perf_counter(), []
    for start in tqdm(range(0, len(questions), 8), desc="score", unit="batch"):
        chunk = slice(start, start + 8)
        scores += scorer.score_batch([q.question for q in questions[chunk]],
                                     [[by_id[p] for p in c] for c in candidates[chunk]])
    pairs = sum(len(c) for c in candidates)
    return scores, (time.perf_counter() - started) / pairs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data-dir", help="folder with odqa/ (default: $INVAR_RAG_DATA or "
                                           "../shared/data)")
    parser.add_argument("--per-dataset", type=int, default=60,
                        help="tuning questions per dataset")
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--layers", type=int, nargs="*", default=[20, 15],
                        help="truncated stacks to try (first N layers)")
    parser.add_argument("--caps", type=int, nargs="*", default=[96],
                        help="shorter passage caps to try")
    parser.add_argument("--precision", default="auto", help="scorer precision")
    args = parser.parse_args(argv)
    from benchmarks.run import save_and_render
    from invar_rag_integrations.evaluation import odqa_corpus, odqa_questions
    from invar_rag_integrations.evaluation.qa_eval import sample_per_dataset
    from invar_rag_integrations.invar import (
        InvarSettings,
        ScorerSettings,
        TwoStageRetriever,
        fused_score,
    )
    from invar_rag_integrations.invar.scorer import InvarScorer
    from invar_rag_integrations.models import load_base_lm

    questions = sample_per_dataset(odqa_questions("tune", DATASETS, data=args.data_dir),
                                   args.per_dataset, seed=0)
    corpus = odqa_corpus(args.data_dir)
    by_id = {p.id: p for p in corpus}
    retriever = TwoStageRetriever.zero_shot(settings=InvarSettings(candidates=args.depth),
                                         precision=args.precision, show_progress=False)
    retriever.index(corpus)
    dense = retriever.stage1.retrievers[1]
    texts = [q.question for q in questions]
    rankings = {"rrf": [r.ids for r in retriever.stage1.search(texts, args.depth)],
                "minilm": [r.ids for r in dense.search(texts, args.depth)]}
    union = [list(dict.fromkeys(a + b)) for a, b in zip(rankings["rrf"], rankings["minilm"])]
    scorer = retriever.scorer
    lm_scores, per_pair = _score(scorer, questions, union, by_id)
    query_vectors = retriever.reranker.coarse(texts)
    rows = [_row("upr-zero-shot", "tune-pairs", "s_per_pair", per_pair,
                 sum(len(c) for c in union), "tune")]
    rows += _accuracy_rows("rrf", questions, _hits(questions, rankings["rrf"], by_id))
    rows += _accuracy_rows("minilm", questions, _hits(questions, rankings["minilm"], by_id))
    best = None
    for stage1, ranked in rankings.items():
        bm25 = retriever.bm25_term(texts, ranked) if stage1 == "rrf" else None
        for depth in (5, args.depth):
            for w, w_bm25 in itertools.product(WEIGHTS, BM25_WEIGHTS if bm25 else (0.0,)):
                ordered = []
                for i, cands in enumerate(ranked):
                    position = {p: j for j, p in enumerate(union[i])}
                    shown = cands[:depth]
                    r = np.array([lm_scores[i][position[p]] for p in shown])
                    [cos] = retriever.passage_cosines(query_vectors[i][None], [shown])
                    s = fused_score(r, cos, w, retriever.settings.tau,
                                    bm25[i][:depth] if bm25 else None, w_bm25)
                    ordered.append([shown[j] for j in np.argsort(-s, kind="stable")])
                name = f"{stage1}-k{depth}-w{w}" + (f"-bm25{w_bm25}" if bm25 else "")
                found = _accuracy_rows(name, questions, _hits(questions, ordered, by_id))
                rows += found
                mean = float(np.mean([r["value"] for r in found if r["metric"] == "acc@1"]))
                print(f"{name}: mean Acc@1 {mean:.3f}", file=sys.stderr)
                if best is None or mean > best[0]:
                    best = (mean, name)
    print(f"best: {best[1]} (mean Acc@1 {best[0]:.3f})", file=sys.stderr)

    # cheaper scorers on RRF's candidates at the full depth, fused with w = 0.1 (no BM25 term)
    # (the full scorer's row for the same fusion is rrf-k<depth>-w0.1-bm250.0 above)
    cheaper = [("cap", cap) for cap in args.caps] + [("layers", n) for n in args.layers]
    if str(scorer.dtype) == "torch.bfloat16":  # does bf16 rank like float32?
        cheaper.append(("precision", "float32"))
    for kind, value in cheaper:
        lm, settings, precision = scorer.lm, scorer.settings, args.precision
        if kind == "layers":  # a copy of the LM with its first ``value`` layers only
            lm, _ = load_base_lm(scorer.lm.invar_source.name)
            lm.model.layers = lm.model.layers[:value]
            lm.config.num_hidden_layers = value
        elif kind == "cap":
            settings = ScorerSettings(max_passage_tokens=value)
        else:
            precision = value
        other = InvarScorer(lm, scorer.tokenizer, settings, precision=precision)
        ranked = rankings["rrf"]
        values, per_pair = _score(other, questions, ranked, by_id)
        ordered = []
        for i, cands in enumerate(ranked):
            [cos] = retriever.passage_cosines(query_vectors[i][None], [cands])
            s = 0.1 * cos / retriever.settings.tau + values[i]
            ordered.append([cands[j] for j in np.argsort(-s, kind="stable")])
        name = f"rrf-k{args.depth}-w0.1-{kind}{value}"
        rows += _accuracy_rows(name, questions, _hits(questions, ordered, by_id))
        rows.append(_row(name, "tune-pairs", "s_per_pair", per_pair,
                         sum(len(c) for c in ranked), "tune"))
    save_and_render("zero_shot_tuning", rows, "benchmarks.tune_zero_shot", argv)


if __name__ == "__main__":
    main()
