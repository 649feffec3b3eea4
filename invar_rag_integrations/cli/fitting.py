"""The commands that fit a trained system's probabilities on questions with answers and store
them in its manifest: ``calibrate`` (relevance) and ``fit-abstention`` (when to decline)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..evaluation.chunking import CHUNKING_NAMES, PASSAGES
from ..evaluation.datasets import SPLITS
from ..generation.abstention import SIGNALS
from ..training.abstention import KEEP_CORRECT


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _calibrate(args: argparse.Namespace) -> None:
    import json

    from ..evaluation import odqa_questions
    from ..evaluation.chunking import chunked_corpus
    from ..training.calibrate import calibrate_system

    questions = odqa_questions(args.split, args.datasets, args.limit, args.data_dir)
    corpus = chunked_corpus(args.chunking, args.data_dir)  # before any model loads
    report = calibrate_system(args.system, questions, corpus, _command(args))
    print(json.dumps(report, indent=2))
    print(f"stored the calibration fitted on {len(questions)} questions in {args.system}",
          file=sys.stderr)


def _fit_abstention(args: argparse.Namespace) -> None:
    import json

    from ..evaluation import odqa_questions
    from ..evaluation.chunking import chunked_corpus
    from ..paths import cache_dir
    from ..training.abstention import fit_abstention_system

    questions = odqa_questions(args.split, args.datasets, args.limit, args.data_dir)
    corpus = chunked_corpus(args.chunking, args.data_dir)
    command = _command(args, f"--signals {' '.join(args.signals)}",
                       f"--keep-correct {args.keep_correct}",
                       *(["--on-by-default"] if args.on_by_default else []))
    report = fit_abstention_system(args.system, questions, corpus, cache_dir() / "abstention",
                                   command, signals=args.signals, keep_correct=args.keep_correct,
                                   on_by_default=args.on_by_default)
    print(json.dumps(report, indent=2))
    print(f"stored the abstention model in {args.system}", file=sys.stderr)


def _command(args: argparse.Namespace, *options: str) -> str:
    """The command as it ran, from its arguments (what the manifest records as the source;
    ``sys.argv`` is another program's when the command line is called from Python)."""
    return " ".join([f"invar-rag {args.command} {args.system}",
                     *([f"--data-dir {args.data_dir}"] if args.data_dir else []),
                     f"--split {args.split} --chunking {args.chunking}",
                     *([f"--datasets {' '.join(args.datasets)}"] if args.datasets else []),
                     *([f"--limit {args.limit}"] if args.limit else []), *options])


def _question_arguments(parser: argparse.ArgumentParser, split: str = "dev") -> None:
    """The system and the questions (with answers) a command fits it on."""
    parser.add_argument("system", help="system directory (its manifest is updated)")
    parser.add_argument("--data-dir",
                        help="folder with odqa/corpus.jsonl and odqa/dev_questions.jsonl (the "
                             "layout make-questions writes; default: $INVAR_RAG_DATA or "
                             "../shared/data)")
    parser.add_argument("--datasets", nargs="+",
                        help="datasets of the questions file (default: the shared ones; "
                             "synthetic for make-questions' output)")
    parser.add_argument("--split", choices=SPLITS, default=split,
                        help="which of the questions (dev: all)")
    parser.add_argument("--chunking", choices=CHUNKING_NAMES, default=PASSAGES,
                        help="cut the corpus's articles into nodes as your pipeline does")
    parser.add_argument("--limit", type=positive_int, help="first N questions of each dataset")


def add_fitting_commands(commands: Any) -> None:
    """Add ``calibrate`` and ``fit-abstention`` to the command line's sub-parsers."""
    calibrate = commands.add_parser(
        "calibrate", help="fit a system's relevance probabilities on questions with answers "
                          "(e.g. those make-questions writes) and store them in it")
    _question_arguments(calibrate)
    calibrate.set_defaults(func=_calibrate)

    abstention = commands.add_parser(
        "fit-abstention", help="fit when a system's RAG declines (\"not found in the "
                               "documents\"): its questions answered over the corpus and over "
                               "the corpus without their answers; stored in the system")
    _question_arguments(abstention, split="tune")
    abstention.add_argument("--signals", nargs="+", choices=SIGNALS, default=list(SIGNALS),
                            help="what the confidence reads (without closed_logprob and pmi "
                                 "it needs no extra pass of the generator)")
    abstention.add_argument("--keep-correct", type=float, default=KEEP_CORRECT,
                            help="share of the correct answers the threshold keeps")
    abstention.add_argument("--on-by-default", action="store_true",
                            help="the system declines unless a call says abstain=False")
    abstention.set_defaults(func=_fit_abstention)
