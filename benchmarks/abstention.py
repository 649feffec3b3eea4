"""Abstention: ``python -m benchmarks.abstention`` (part of ``make bench``).

Questions the corpus cannot answer, built from each split (``evaluation/unanswerable.py``): the
questions of nq, popqa_longtail and squad whose question holds no answer word and whose
answers occur in 1 to 50 corpus passages; for each dataset, every passage holding one of their
answers is removed and the reduced corpus indexed anew. *Answerable*: the same questions over
the full corpus with an answer in the top ``k`` passages the generator reads; *unanswerable*:
over the reduced corpus. The shipped system answers both (the answers and their evidence are
cached under ``abstention`` in the project cache).

The abstention model (``training/abstention.py``: a logistic model of the signals, the threshold
keeping ``--keep-correct`` of the correct answers) is fitted on the ``tune`` questions and
measured on the ``val`` questions, per dataset: AUROC of its confidence for answerable against
unanswerable, and at the stored threshold the share of unanswerable questions declined, the
share of the correct answers kept, the share answered and their EM. ``relevance-only``: the
same for the best source's calibrated relevance alone (fitted and thresholded the same way),
with the questions on which the two disagree (unanswerable ones declined by one alone, correct
answers kept by one alone).
Also each signal's own AUROC, the coverage curve (EM of the answered questions against the
share answered, most confident first) and the seconds per question of answering with and
without deciding (the first ``--timed`` val questions, retrieval excluded).
``--write-system`` stores the model in the shipped system, as ``make demo-system`` does with
``invar-rag fit-abstention``.

Writes ``benchmarks/results/abstention.json``.
"""

from __future__ import annotations

import argparse

from benchmarks.run import DATASETS, _row, save_and_render
from invar_rag_integrations.demo import SHIPPED_SYSTEM

BASELINE = ("relevance",)
BASELINE_NAME = "relevance-only"


def paired(answered, baseline, examples) -> dict[str, int]:
    """Questions where the two thresholds disagree: unanswerable ones declined by one alone,
    correct answers kept by one alone."""
    counts = dict.fromkeys(("declined_only_here", "declined_only_by_relevance",
                            "kept_only_here", "kept_only_by_relevance"), 0)
    for mine, theirs, example in zip(answered, baseline, examples):
        if mine == theirs:
            continue
        if not example.answerable:
            counts["declined_only_here" if theirs else "declined_only_by_relevance"] += 1
        elif example.correct:
            counts["kept_only_here" if mine else "kept_only_by_relevance"] += 1
    return counts


def timing_rows(rag, questions: list[str]) -> list[dict]:
    """Seconds per question of answering (retrieval excluded) without and with deciding
    whether to decline, on the same sources, after one warm-up batch."""
    import time

    sources = rag.retrieve_batch(questions)
    rag.answer_batch(questions[:8], sources=sources[:8])
    rows = []
    for system, abstain in (("answer", False), ("answer+abstain", True)):
        started = time.perf_counter()
        rag.answer_batch(questions, sources=sources, abstain=abstain)
        rows.append(_row(system, "all", "s_per_question",
                         (time.perf_counter() - started) / len(questions), len(questions),
                         "val"))
    return rows


def main(argv: list[str] | None = None) -> None:
    from invar_rag_integrations.evaluation import odqa_corpus, odqa_questions
    from invar_rag_integrations.evaluation.abstention_eval import (
        abstention_set,
        at_threshold,
        auroc,
        coverage_curve,
    )
    from invar_rag_integrations.evaluation.unanswerable import AnswerIndex
    from invar_rag_integrations.generation.abstention import SIGNALS, store_abstention
    from invar_rag_integrations.paths import cache_dir
    from invar_rag_integrations.rag import InvarRAG
    from invar_rag_integrations.system import read_manifest
    from invar_rag_integrations.training.abstention import (
        DEFAULT_SIGNALS,
        KEEP_CORRECT,
        fit_abstention,
        signal_table,
    )

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--system", default=str(SHIPPED_SYSTEM), help="trained system directory")
    parser.add_argument("--data-dir", help="folder with odqa/ (default: $INVAR_RAG_DATA or "
                                           "../shared/data)")
    parser.add_argument("--signals", nargs="+", choices=SIGNALS, default=list(DEFAULT_SIGNALS))
    parser.add_argument("--keep-correct", type=float, default=KEEP_CORRECT)
    parser.add_argument("--write-system", action="store_true",
                        help="store the fitted model in --system (on by default: "
                             "--on-by-default)")
    parser.add_argument("--on-by-default", action="store_true")
    parser.add_argument("--timed", type=int, default=64,
                        help="val questions answered with and without deciding, timed")
    args = parser.parse_args(argv)

    corpus = odqa_corpus(args.data_dir)
    rag = InvarRAG.from_pretrained(args.system, corpus=corpus, abstain=False)
    rag.retriever.show_progress = False
    index = AnswerIndex(corpus)
    generator = read_manifest(args.system)["generator"]["hash"]
    sets = {split: abstention_set(rag, odqa_questions(split, DATASETS, data=args.data_dir),
                                  corpus, cache_dir() / "abstention", generator, index=index)
            for split in ("tune", "val")}
    source = f"python -m benchmarks.abstention: {len(sets['tune'].examples)} tune examples"
    models = {"invar-rag": fit_abstention(sets["tune"].examples, args.signals,
                                          args.keep_correct, source),
              BASELINE_NAME: fit_abstention(sets["tune"].examples, BASELINE,
                                               args.keep_correct, source)}
    rows = []
    for split, chosen in sets.items():
        for dataset in DATASETS:
            examples = [e for e in chosen.examples if e.dataset == dataset]
            answerable = [e.answerable for e in examples]
            counts = {**{f"excluded_{rule}": n for rule, n in chosen.excluded[dataset].items()},
                      "kept": chosen.kept[dataset], "answerable": sum(answerable),
                      "unanswerable": len(examples) - sum(answerable),
                      "correct": sum(e.answerable and e.correct for e in examples)}
            rows += [_row("questions", dataset, name, value, len(examples), split)
                     for name, value in counts.items()]
            table = signal_table(examples, SIGNALS)
            rows += [_row(f"signal:{name}", dataset, "auroc_unanswerable",
                          auroc(values, answerable), len(examples), split)
                     for name, values in table.items()]
            answered = {system: model.model.probability(table) >= model.threshold
                        for system, model in models.items()}
            for system, model in models.items():
                confidence = model.model.probability(table)
                figures = {"auroc_unanswerable": auroc(confidence, answerable),
                           **at_threshold(confidence, examples, model.threshold),
                           "threshold": model.threshold}
                if system != BASELINE_NAME:
                    figures |= paired(answered[system], answered[BASELINE_NAME], examples)
                if split == "val":
                    figures |= {f"em@coverage={c:.1f}": em for c, em in coverage_curve(
                        confidence, [e.correct for e in examples])}
                rows += [_row(system, dataset, name, value, len(examples), split)
                         for name, value in figures.items()]
    rag.abstention = models["invar-rag"]
    rows += timing_rows(rag, [q.question for q in odqa_questions("val", DATASETS,
                                                                 data=args.data_dir)][:args.timed])
    for system, model in models.items():
        print(system, dict(zip(model.model.features, model.model.weights)),
              f"threshold {model.threshold:.3f}", model.fitted_on)
    if args.write_system:
        store_abstention(args.system, models["invar-rag"], args.on_by_default)
        print(f"stored the abstention model in {args.system}")
    save_and_render("abstention", rows, "benchmarks.abstention", argv)


if __name__ == "__main__":
    main()
