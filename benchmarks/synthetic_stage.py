"""Training on synthetic questions: ``python -m benchmarks.synthetic_stage`` (``make bench``).

In one run:
1. ``invar-rag make-questions`` over a seeded sample of ``--passages`` passages of the shared
   ODQA corpus (the corpus only, never the dev questions) with the embedded SmolLM2 and the
   BM25 round trip, into ``benchmarks/systems/synthetic-questions`` (resumable): the filter pass
   rate and questions per second;
2. ``invar-synthetic``: the CPU configuration (``training/configs/retriever_smollm2_cpu.json``)
   trained on those questions alone (``--data_dir`` the generated folder, ``--train_datasets
   synthetic``), and ``minilm-ft-synthetic``: MiniLM fine-tuned on the same questions (3 epochs,
   the best on the tuning slice kept: a few hundred triplets instead of ~3,000); their
   training time and tuning curves (the tuning slice is synthetic too);
3. on the same seeded sample of the REAL validation carve-out as ``benchmarks.retriever_stage``:
   Acc@1/5/20 of BM25, MiniLM, ``minilm-ft-synthetic``, and Acc@1/5 of the two-stage retrievers
   at the shipped depth (5 candidates: their Acc@20 is stage 1's), ``upr-zero-shot``,
   ``invar-synthetic`` and ``invar`` (the shipped system, the same configuration trained on
   real training questions), so the gap to real questions stands beside it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.retriever_stage import (
    CONFIG,
    KS,
    SYSTEMS_DIR,
    _accuracy,
    _depth_rows,
    _search,
    sampled_questions,
)
from benchmarks.run import ROOT, _row

QUESTIONS_DIR = SYSTEMS_DIR / "synthetic-questions"
SHIPPED = ROOT / "invar_rag_integrations" / "demo" / "system"


def generate(corpus_file: Path, passages: int, batch_size: int) -> list[dict]:
    """Step 1: synthetic questions (a folder holding some is resumed); the filter pass rate and
    the generation speed over every timed run (``timing`` in its manifest)."""
    subprocess.run([sys.executable, "-m", "invar_rag_integrations.cli", "make-questions",
                    "--corpus", str(corpus_file), "--output", str(QUESTIONS_DIR),
                    "--passages", str(passages), "--batch-size", str(batch_size)],
                   cwd=ROOT, check=True)
    manifest = json.loads((QUESTIONS_DIR / "synthetic.json").read_text())
    counts, timing = manifest["counts"], manifest["timing"]
    rows = [_row("make-questions", "odqa-corpus", "pass_rate", counts["pass_rate"],
                 counts["passages"], "synthetic"),
            _row("make-questions", "odqa-corpus", "questions", counts["questions"],
                 counts["passages"], "synthetic")]
    if timing["seconds"]:
        rows += [_row("make-questions", "odqa-corpus", "passages_per_s",
                      timing["passages"] / timing["seconds"], timing["passages"], "synthetic"),
                 _row("make-questions", "odqa-corpus", "questions_per_s",
                      timing["questions"] / timing["seconds"], timing["passages"], "synthetic")]
    rows += [_row("make-questions", status, "passages", n, counts["passages"], "synthetic")
             for status, n in counts["by_status"].items()]
    return rows


def train_invar(config: Path) -> Path:
    """Step 2: the CPU configuration on the synthetic questions (the driver resumes)."""
    folder = SYSTEMS_DIR / "invar-synthetic"
    if not ((folder / "invar_rag.json").is_file() and (folder / "index").is_dir()):
        subprocess.run([sys.executable, "-m", "invar_rag_integrations.training.train_retriever",
                        str(config), "--output_dir", str(folder), "--data_dir",
                        str(QUESTIONS_DIR), "--train_datasets", "synthetic",
                        "--questions_per_dataset", "-1"], cwd=ROOT, check=True)
    return folder


def _training_rows(system: str, folder: Path) -> list[dict]:
    manifest = json.loads((folder / "invar_rag.json").read_text())
    metrics = manifest["metrics"]["retriever"]
    rows = [_row(system, "train", "train_s", metrics["total_seconds"], metrics["train_examples"]),
            _row(system, "train", "cos_weight", manifest["retriever"]["settings"]["cos_weight"],
                 metrics["train_examples"])]
    for point in metrics["tuning_curve"]:  # Acc@1 per dataset and mean (not the weights)
        rows += [_row(system, d, f"tune_acc@1:step{point['step']}", v, 0, "tune")
                 for d, v in point.items() if d in ("synthetic", "mean")]
    return rows


def evaluate(data: str | None, sample: int, invar_dir: Path) -> list[dict]:
    """Step 3: every system on the same real validation questions."""
    from invar_rag_integrations.evaluation import odqa_corpus
    from invar_rag_integrations.invar import TwoStageRetriever
    from invar_rag_integrations.training.baselines import BaselineSettings, trained_baseline
    from invar_rag_integrations.training.catalog import make_retriever

    corpus = odqa_corpus(data)
    by_id = {p.id: p for p in corpus}
    questions = sampled_questions(data, sample)
    queries = [q.question for q in questions]
    rows: list[dict] = []
    ft = trained_baseline("minilm-ft", str(QUESTIONS_DIR), BaselineSettings(epochs=3),
                          datasets=["synthetic"], label="minilm-ft-synthetic")
    log = ft.training_log
    rows.append(_row("minilm-ft-synthetic", "train", "train_s", log["train_seconds"],
                     log["train_questions"]))
    rows += [_row("minilm-ft-synthetic", d, f"tune_acc@1:epoch{point['epoch']}", v,
                  log["tune_questions"], "tune")
             for point in log["curve"] for d, v in point.items()
             if d not in ("epoch", "step", "loss")]
    for name, retriever in (("bm25", make_retriever("bm25")), ("minilm", make_retriever("minilm")),
                            ("minilm-ft-synthetic", ft)):
        print(f"== {name}", file=sys.stderr, flush=True)
        retriever.index(corpus)
        rows += _accuracy(name, questions, _search(retriever, queries, max(KS), name), by_id)
    two_stage = (("upr-zero-shot", TwoStageRetriever.zero_shot(show_progress=False)),
                 ("invar-synthetic", TwoStageRetriever.from_pretrained(invar_dir, index=None,
                                                                    show_progress=False)),
                 ("invar", TwoStageRetriever.from_pretrained(SHIPPED, index=None,
                                                          show_progress=False)))
    for name, retriever in two_stage:
        print(f"== {name}", file=sys.stderr, flush=True)
        retriever.index(corpus)
        depth = retriever.settings.candidates
        rows += _depth_rows(name, retriever, questions, by_id, (depth,), depth)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data-dir", help="folder with odqa/ (default: $INVAR_RAG_DATA or "
                                           "../shared/data)")
    parser.add_argument("--passages", type=int, default=600,
                        help="corpus passages sampled for synthetic questions")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--config", type=Path, default=CONFIG,
                        help="training config of invar-synthetic")
    parser.add_argument("--sample", type=int, default=100,
                        help="val questions per dataset (the same for every system)")
    args = parser.parse_args(argv)
    from benchmarks.run import save_and_render
    from invar_rag_integrations.paths import data_dir

    rows = generate(data_dir(args.data_dir) / "odqa" / "corpus.jsonl", args.passages,
                    args.batch_size)
    invar_dir = train_invar(args.config)
    rows += _training_rows("invar-synthetic", invar_dir)
    rows += evaluate(args.data_dir, args.sample, invar_dir)
    save_and_render("synthetic_stage", rows, "benchmarks.synthetic_stage", argv)


if __name__ == "__main__":
    main()
