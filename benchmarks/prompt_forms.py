"""How the scorer's prompt is joined and framed: ``python -m benchmarks.prompt_forms``.

On every val question of nq, squad and popqa_longtail, the shipped zero-shot retriever (RRF
stage 1, its default reading and early stop) ranks the corpus three ways, in one run:
- ``plain``: today's tokens, the joined text's tokenisation;
- ``split-join``: the tokens before they were (the head's trailing space read as a token of
  its own, then the title without it);
- ``chat``: the prompt in the base model's chat form (SmolLM2-Instruct's ChatML, its system
  turn included).
Acc@1/5 per dataset, paired Acc@1 wins and losses of each way against ``plain``, how well the
served relevance probabilities of the top five match their outcomes (ECE over 10 bins, Brier;
label: the passage holds an answer) under the calibration each way gets (the embedded one,
fitted on ``split-join`` readings; a fallback for ``chat``), candidates the scorer read per
question and seconds per question. Writes ``benchmarks/results/prompt_forms.json``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from benchmarks.run import DATASETS, _row

FORMS = ("plain", "split-join", "chat")


def split_join(retriever) -> None:
    """Read the prompt's head as it was tokenised before the join was made exact: its trailing
    space a token of its own, and the passage's first word without it."""
    tokens = retriever.scorer.tokens
    tokens.head = tokens.tokenizer(tokens.head_text + tokens.lead,
                                   add_special_tokens=False)["input_ids"]
    tokens.lead = ""
    tokens._nodes.clear()


def ranked(form: str, corpus, questions, batch_size: int) -> dict:
    """Per question, an answer in the first and in the top five results (``top1``, ``top5``)
    and the served probabilities of the top five with their labels (``served``); candidates
    read per question (``pairs``); seconds per question."""
    from invar_rag_integrations.evaluation.metrics import has_answer
    from invar_rag_integrations.evaluation.retrieval_eval import hit_ranks
    from invar_rag_integrations.invar import InvarSettings, TwoStageRetriever

    settings = InvarSettings(chat_template="model") if form == "chat" else InvarSettings()
    retriever = TwoStageRetriever.zero_shot(settings=settings, show_progress=False)
    if form == "split-join":
        split_join(retriever)
    retriever.index(corpus)
    counts = retriever.scorer.window_counts
    read, started, results = counts["nodes"], time.perf_counter(), []
    for start in range(0, len(questions), batch_size):
        results += retriever.search([q.question for q in questions[start:start + batch_size]],
                                    5)
        print(f"{form}: {len(results)}/{len(questions)} in "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    seconds = (time.perf_counter() - started) / len(questions)
    by_id = {p.id: p for p in corpus}
    ranks = hit_ranks(questions, results, by_id)
    served = [[(p, has_answer(q.answers, by_id[i].full_text()))
               for i, p in zip(r.ids, r.scores)] for q, r in zip(questions, results)]
    return {"top1": np.array([r == 0 for r in ranks]),
            "top5": np.array([r is not None and r < 5 for r in ranks]), "served": served,
            "pairs": (counts["nodes"] - read) / len(questions), "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data-dir", help="folder with odqa/ (default: $INVAR_RAG_DATA or "
                                           "../shared/data)")
    parser.add_argument("--forms", nargs="+", default=list(FORMS), choices=FORMS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--per-dataset", type=int,
                        help="a seeded sample of this many val questions per dataset (default: "
                             "all)")
    args = parser.parse_args(argv)
    if "plain" not in args.forms:
        parser.error("--forms must include plain (the others are paired against it)")
    from benchmarks.run import save_and_render
    from invar_rag_integrations.evaluation import odqa_corpus, odqa_questions
    from invar_rag_integrations.evaluation.metrics import calibration_errors
    from invar_rag_integrations.evaluation.qa_eval import sample_per_dataset

    corpus = odqa_corpus(args.data_dir)
    questions = odqa_questions("val", DATASETS, data=args.data_dir)
    if args.per_dataset:
        questions = sample_per_dataset(questions, args.per_dataset, seed=0)
    names = np.array([q.dataset for q in questions])
    found = {form: ranked(form, corpus, questions, args.batch_size) for form in args.forms}
    rows = []
    plain = found["plain"]["top1"]
    for form, result in found.items():
        top1, top5 = result["top1"], result["top5"]
        for dataset in DATASETS:
            mask = names == dataset
            n = int(mask.sum())
            rows += [_row(form, dataset, "acc@1", float(top1[mask].mean()), n, "val"),
                     _row(form, dataset, "acc@5", float(top5[mask].mean()), n, "val")]
            pairs = [pair for i in np.flatnonzero(mask) for pair in result["served"][i]]
            errors = calibration_errors([p for p, _ in pairs], [y for _, y in pairs])
            rows += [_row(form, dataset, "ece_top5", errors["ece"], len(pairs), "val"),
                     _row(form, dataset, "brier_top5", errors["brier"], len(pairs), "val")]
            if form != "plain":
                rows += [_row(form, dataset, "wins_vs_plain", int((top1 & ~plain)[mask].sum()),
                              n, "val"),
                         _row(form, dataset, "losses_vs_plain",
                              int((~top1 & plain)[mask].sum()), n, "val")]
        rows += [_row(form, "all", "pairs_per_query", result["pairs"], len(questions), "val"),
                 _row(form, "all", "s_per_query", result["seconds"], len(questions), "val")]
    save_and_render("prompt_forms", rows, "benchmarks.prompt_forms", argv)


if __name__ == "__main__":
    main()
