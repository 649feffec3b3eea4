"""Generation-stage benchmark: ``python -m benchmarks.generation_stage`` (part of ``make bench``).

On the validation carve-out of nq, popqa_longtail and triviaqa_dev (a fixed seeded sample of at
most ``--sample`` questions per dataset), in one run and on one copy of the base model:
closed-book base LM; base LM + MiniLM top-k; base LM + Invar top-k; the generator adapter +
MiniLM top-k (does the retriever matter for the answers?); generator adapter + Invar top-k (the
full system). Reports EM and F1 per dataset, generation tokens/s and seconds per
question. The system defaults to the small one the package ships (its prompt, k and budgets
apply to every row). Writes ``benchmarks/results/generation_stage.json``.
"""

from __future__ import annotations

import argparse

from benchmarks.run import save_and_render
from invar_rag_integrations.demo import SHIPPED_SYSTEM


def main(argv: list[str] | None = None) -> None:
    from invar_rag_integrations.evaluation import odqa_corpus, odqa_questions
    from invar_rag_integrations.evaluation.qa_eval import (
        QA_DATASETS,
        QA_SYSTEMS,
        compare_systems,
        sample_per_dataset,
    )
    from invar_rag_integrations.evaluation.results import pivot_table

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--system", default=str(SHIPPED_SYSTEM), help="trained system directory")
    parser.add_argument("--data-dir", help="folder with odqa/ (default: $INVAR_RAG_DATA or "
                                           "../shared/data)")
    parser.add_argument("--sample", type=int, default=150,
                        help="seeded sample of at most N val questions per dataset")
    parser.add_argument("--systems", nargs="+", choices=QA_SYSTEMS, default=list(QA_SYSTEMS))
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)

    questions = sample_per_dataset(odqa_questions("val", QA_DATASETS, data=args.data_dir),
                                   args.sample, seed=0)
    rows = compare_systems(args.system, questions, odqa_corpus(args.data_dir), "val",
                           args.systems, args.batch_size)
    print(pivot_table([r for r in rows if r["dataset"] != "all"], ["em", "f1"]))
    save_and_render("generation_stage", rows, "benchmarks.generation_stage", argv)


if __name__ == "__main__":
    main()
