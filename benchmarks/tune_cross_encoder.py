"""Which recipe trains ``ce-ft``: ``python -m benchmarks.tune_cross_encoder``.

Each recipe (loss, learning rate) trains the cross-encoder on the same seeded sample of
``--train-questions`` training questions and is evaluated on the tuning slice (reranking RRF's
top 5, Acc@1) at its start and every ``--eval-every`` steps: the learning curves decide the
default in ``CrossEncoderSettings``. Validation questions are never read. Writes
``benchmarks/results/cross_encoder_tuning.json`` (each recipe's curve, and its training time).
"""

from __future__ import annotations

import argparse

from benchmarks.run import _row

RECIPES = {"bce-lr5e-5": {"loss": "bce", "learning_rate": 5e-5},
           "mnrl-lr5e-5": {"loss": "mnrl", "learning_rate": 5e-5},
           "mnrl-lr2e-4": {"loss": "mnrl", "learning_rate": 2e-4}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data-dir", help="folder with odqa/ (default: $INVAR_RAG_DATA or "
                                           "../shared/data)")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--train-questions", type=int, default=384)
    parser.add_argument("--eval-every", type=int, default=8)
    parser.add_argument("--tune-per-dataset", type=int, default=50)
    args = parser.parse_args(argv)
    from benchmarks.run import save_and_render
    from invar_rag_integrations.training.baselines import trained_baseline
    from invar_rag_integrations.training.cross_encoder import CrossEncoderSettings

    rows = []
    for name in args.recipes:
        settings = CrossEncoderSettings(**RECIPES[name], train_questions=args.train_questions,
                                        eval_every=args.eval_every,
                                        tune_per_dataset=args.tune_per_dataset)
        log = trained_baseline("ce-ft", args.data_dir, settings).training_log
        system = f"ce-ft-{name}"
        n = log["tune_questions"]
        for point in log["curve"]:
            for dataset in ("nq", "popqa_longtail", "squad", "mean"):
                rows.append(_row(system, dataset, f"tune_acc@1:step{point['step']}",
                                 point[dataset], n, "tune"))
        rows.append(_row(system, "all", "train_s", log["train_seconds"],
                         args.train_questions, "train"))
    save_and_render("cross_encoder_tuning", rows, "benchmarks.tune_cross_encoder", argv)


if __name__ == "__main__":
    main()
