"""Question and corpus loaders: the shared ODQA files, FreebaseQA, and HF ``datasets`` originals.

Splits of the ODQA dev questions:
- ``dev``: every question;
- ``val``: a fixed validation carve-out (about 30%, chosen by a hash of the question id, so it
  never depends on file order) that training never sees;
- ``train``: the rest;
- ``tune``: a fixed slice of ``train`` (about 15%, by another hash) held apart for choosing
  settings and early stopping;
- ``fit``: ``train`` without ``tune`` (what the retriever and its baselines are trained on).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..data import Passage, Question, load_passages, read_jsonl
from ..paths import data_dir

ODQA_DATASETS = ("nq", "popqa_longtail", "squad", "triviaqa_dev")
RETRIEVAL_DATASETS = ("nq", "popqa_longtail", "squad")  # TriviaQA has no covering passages
SPLITS = ("dev", "val", "train", "tune", "fit")
VAL_PERCENT = 30
TUNE_PERCENT = 15


def _bucket(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big") % 100


def in_validation(question_id: str) -> bool:
    """Whether a question belongs to the fixed validation carve-out."""
    return _bucket(question_id) < VAL_PERCENT


def in_tuning(question_id: str) -> bool:
    """Whether a training question belongs to the tuning slice (``tune``)."""
    return not in_validation(question_id) and _bucket(f"tune|{question_id}") < TUNE_PERCENT


def select_split(questions: Iterable[Question], split: str) -> list[Question]:
    """Keep the questions of ``split``: ``dev`` = all, ``val`` = carve-out, ``train`` = the
    rest, ``tune`` = a fixed slice of ``train``, ``fit`` = ``train`` without ``tune``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if split == "dev":
        return list(questions)
    if split == "val":
        return [q for q in questions if in_validation(q.id)]
    train = [q for q in questions if not in_validation(q.id)]
    if split == "train":
        return train
    return [q for q in train if in_tuning(q.id) == (split == "tune")]


def odqa_corpus(data: str | os.PathLike[str] | None = None) -> list[Passage]:
    """The 14k-passage ODQA corpus from ``<data>/odqa/corpus.jsonl``."""
    return load_passages(data_dir(data) / "odqa" / "corpus.jsonl")


def odqa_questions(
    split: str = "dev",
    datasets: Sequence[str] | None = None,
    limit: int | None = None,
    data: str | os.PathLike[str] | None = None,
) -> list[Question]:
    """ODQA questions of ``split``, optionally only ``datasets`` and the first ``limit`` of each.

    ``datasets`` may name the shared sets (:data:`ODQA_DATASETS`, the default) or any dataset
    the file holds, e.g. ``synthetic`` in a folder written by ``invar-rag make-questions``.

    Raises:
        ValueError: A dataset name neither shared nor in the file, an unknown split, or a
            non-positive limit.
    """
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    path = data_dir(data) / "odqa" / "dev_questions.jsonl"
    by_dataset: dict[str, list[Question]] = {}
    for number, record in read_jsonl(path):
        try:
            question = _odqa_question(record)
        except (KeyError, TypeError) as err:
            raise ValueError(f"{path}:{number}: malformed question record ({err})") from None
        by_dataset.setdefault(question.dataset, []).append(question)
    wanted = tuple(datasets or ODQA_DATASETS)
    known = dict.fromkeys([*ODQA_DATASETS, *by_dataset])
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise ValueError(f"unknown datasets {unknown}; known in {path}: {', '.join(known)}")
    selected = []
    for name in wanted:
        kept = select_split(by_dataset.get(name, []), split)
        selected.extend(kept[:limit] if limit else kept)
    return selected


def _odqa_question(record: dict) -> Question:
    core = {"dataset", "id", "question", "answers", "gold_passage_ids"}
    return Question(
        id=str(record["id"]),
        question=str(record["question"]),
        answers=tuple(str(a) for a in record["answers"]),
        dataset=str(record["dataset"]),
        gold_passage_ids=tuple(str(p) for p in record.get("gold_passage_ids") or ()),
        extra={k: v for k, v in record.items() if k not in core},
    )


def freebaseqa(path: str | os.PathLike[str] | None = None,
               data: str | os.PathLike[str] | None = None) -> list[Question]:
    """FreebaseQA ``question | answer`` lines (defaults to ``<data>/train/FreebaseQA-dev.txt``)."""
    path = Path(path) if path else data_dir(data) / "train" / "FreebaseQA-dev.txt"
    questions = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        question, sep, answer = line.rpartition("|")
        if not sep or not question.strip() or not answer.strip():
            raise ValueError(f"{path}:{number}: expected 'question | answer'")
        questions.append(Question(f"freebaseqa-{path.stem}-{number}", question.strip(),
                                  (answer.strip(),), dataset="freebaseqa"))
    return questions


# --- public originals through HF `datasets` (needs network or a local copy) -------------------

HF_SOURCES = {
    "nq_open": ("google-research-datasets/nq_open", "validation"),
    "popqa": ("akariasai/PopQA", "test"),
    "triviaqa": ("mandarjoshi/trivia_qa", "validation"),
}


def _hf_row(name: str, row: dict, index: int) -> Question:
    if name == "nq_open":
        return Question(f"nq_open-{index}", row["question"], tuple(row["answer"]), "nq_open")
    if name == "popqa":
        answers = row["possible_answers"]
        answers = json.loads(answers) if isinstance(answers, str) else answers
        return Question(f"popqa-{row.get('id', index)}", row["question"], tuple(answers), "popqa",
                        extra={"s_pop": row.get("s_pop")})
    answer = row["answer"]
    aliases = answer.get("normalized_aliases") or answer.get("aliases") or []
    return Question(f"triviaqa-{row.get('question_id', index)}", row["question"],
                    tuple(dict.fromkeys([answer["value"], *aliases])), "triviaqa")


def hf_questions(name: str, source: str | os.PathLike[str] | None = None,
                 split: str | None = None, limit: int | None = None) -> list[Question]:
    """Load a public QA set with HF ``datasets`` and convert it to :class:`Question`.

    Args:
        name: ``nq_open``, ``popqa`` or ``triviaqa``.
        source: A hub id (default: the canonical one) or a local JSON/JSONL/Parquet file with the
            original columns.
        split: Dataset split (default: the evaluation split of the original).
        limit: Keep only the first ``limit`` rows.
    """
    if name not in HF_SOURCES:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(HF_SOURCES)}")
    from .._optional import require

    datasets = require("datasets", "datasets")
    hub_id, default_split = HF_SOURCES[name]
    source = str(source or hub_id)
    if Path(source).is_file():
        suffix = Path(source).suffix.lstrip(".")
        builder = {"jsonl": "json", "json": "json", "parquet": "parquet"}.get(suffix)
        if builder is None:
            raise ValueError(f"{source}: unsupported file type {suffix!r} (json, jsonl, parquet)")
        rows = datasets.load_dataset(builder, data_files=source, split="train")
    else:
        config = "rc.nocontext" if name == "triviaqa" else None
        rows = datasets.load_dataset(source, config, split=split or default_split)
    if limit:
        rows = rows.select(range(min(limit, len(rows))))
    return [_hf_row(name, row, i) for i, row in enumerate(rows)]
