"""Synthetic question-answer pairs from a corpus with no questions (``invar-rag make-questions``).

For a seeded sample of passages: pick an answer span in the passage (a number or a name), ask an
LM to write the question whose answer it is, and keep the pair only if it passes the filters:
the answer occurs in the passage by the evaluation's ``has_answer`` rule, the question does not
contain the answer, and a round trip: either BM25 over the whole corpus ranks the source passage
among its top ``round_trip_depth`` for the question (``retrieval``, as in Promptagator: the
question is about that passage), or the LM reading the passage and the question answers with
the span again (``answer``; strict for a small LM: with the embedded SmolLM2 it kept the pairs
of 3 of 64 corpus passages, the retrieval round trip those of 20 of 64).
The writer is the embedded base LM, a LangChain language model or a LlamaIndex LLM. The output
is the ODQA layout the training drivers read (``odqa/corpus.jsonl``, ``odqa/dev_questions.jsonl``
with ``gold_passage_ids``, dataset ``synthetic``), written as it goes: a killed run keeps what it
wrote and continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .data import Passage, check_corpus, load_passages, save_passages
from .evaluation.metrics import answer_window, f1_score, has_answer, normalize_answer

SYNTHETIC_DATASET = "synthetic"
MANIFEST = "synthetic.json"
PROGRESS = "progress.jsonl"
ROUND_TRIPS = ("retrieval", "answer", "none")

QUESTION_PROMPT = """Read the passage and write a question that the given answer answers.

Passage: Mount Kilimanjaro. Mount Kilimanjaro is a dormant volcano in Tanzania. It is the highest \
mountain in Africa, rising 5,895 metres above sea level.
Answer: Tanzania
Question: In which country is Mount Kilimanjaro?

Passage: Marie Curie. Marie Curie was a physicist and chemist who conducted pioneering research \
on radioactivity. She was born in Warsaw in 1867.
Answer: 1867
Question: When was Marie Curie born?

Passage: The Hobbit. The Hobbit is a children's fantasy novel by J. R. R. Tolkien, published in \
1937 by George Allen & Unwin.
Answer: J. R. R. Tolkien
Question: Who wrote The Hobbit?

Passage: {passage}
Answer: {answer}
Question:"""
"""The one question-writing prompt (demonstrations written for this project; on 39 passages
SmolLM2 wrote 3 malformed questions with it, 10 with a two-shot prompt of bare sentences)."""

_NUMBER = re.compile(r"\b\d[\d,.]*\d\b|\b\d\b")
_OPENERS = {"the", "a", "an", "its", "it", "in", "on", "at", "this", "these", "his", "her",
            "their", "after", "during", "when"}
_NAME = re.compile(r"\b[A-Z][\w'-]*(?:\s+(?:of|the|de|von|van)?\s*[A-Z][\w'-]*)*")


@dataclass(frozen=True)
class SyntheticSettings:
    """How many pairs, from which passages, with which filters.

    Attributes:
        passages: Passages sampled (seeded by id; ``None``: all).
        seed: Seed of the passage sample and the answer spans.
        min_words: Shorter passages are skipped.
        min_span_chars: Shorter answer spans ("I", "27") are not chosen.
        max_passage_words: The writer reads this many words of a passage, around the chosen
            answer (a long node is read in the window that holds it).
        round_trip: ``retrieval``: keep a pair only if BM25 over the corpus ranks the source
            passage in its top ``round_trip_depth`` for the question; ``answer``: only if the
            LM answering from the passage gives the answer back (token F1 >=
            ``min_round_trip_f1``); ``none``.
        round_trip_depth: The retrieval round trip's depth.
        min_round_trip_f1: The answer round trip's threshold.
        batch_size: Passages per call of the writer.
    """

    passages: int | None = 200
    seed: int = 0
    min_words: int = 12
    min_span_chars: int = 4
    max_passage_words: int = 120
    round_trip: str = "retrieval"
    round_trip_depth: int = 5
    min_round_trip_f1: float = 0.5
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.round_trip not in ROUND_TRIPS:
            raise ValueError(f"round_trip must be one of {ROUND_TRIPS}, got {self.round_trip!r}")


def answer_spans(passage: Passage) -> list[str]:
    """Candidate answers in a passage: numbers and capitalised names (the first word of a
    sentence only as part of a longer name), each once, in order of appearance."""
    spans: list[str] = []
    for match in _NUMBER.finditer(passage.text):
        spans.append(match.group().rstrip(".,"))
    for match in _NAME.finditer(passage.text):
        name = match.group().strip()
        start = match.start()
        sentence_start = start == 0 or passage.text[:start].rstrip().endswith((".", "!", "?"))
        if sentence_start:
            first, _, rest = name.partition(" ")
            if first.lower() in _OPENERS:
                name = rest.strip()
            elif not rest:
                continue  # one capitalised word opening a sentence: not necessarily a name
        spans.append(name)
    return list(dict.fromkeys(s for s in spans if s and normalize_answer(s)))


def choose_span(passage: Passage, settings: SyntheticSettings) -> str | None:
    """The passage's answer span (seeded by the seed and the passage id), or ``None`` for a
    passage too short or without one."""
    spans = [s for s in answer_spans(passage) if len(s) >= settings.min_span_chars] \
        if len(passage.text.split()) >= settings.min_words else []
    return random.Random(f"{settings.seed}|{passage.id}").choice(spans) if spans else None


def answer_view(passage: Passage, answer: str, max_words: int) -> Passage:
    """What the writer and the answer round trip read of a passage: its ``max_words`` words
    around the answer (a long node's window that holds it)."""
    return Passage(passage.id, answer_window(passage.text, [answer], max_words), passage.title)


def question_prompt(passage: Passage, answer: str, max_words: int) -> str:
    view = answer_view(passage, answer, max_words)
    title = f"{passage.title}. " if passage.title else ""
    cut = " ..." if len(view.text.split()) < len(passage.text.split()) else ""
    return QUESTION_PROMPT.format(passage=title + view.text + cut, answer=answer)


def clean_question(text: str) -> str | None:
    """The first line of the writer's output as a question, or ``None`` when it is not one."""
    line = text.strip().split("\n", 1)[0].strip().strip('"').strip()
    if line.lower().startswith("question:"):
        line = line[len("question:"):].strip()
    if not line.endswith("?") or len(line.split()) < 3:
        return None
    return line


# --- writers -------------------------------------------------------------------------------

Writer = Callable[[Sequence[str]], list[str]]


def as_writer(llm: Any, max_new_tokens: int = 40) -> Writer:
    """A ``prompts -> texts`` function for any supported LLM: this package's generators (HF or
    vLLM), a LangChain ``BaseLanguageModel`` / ``BaseChatModel`` or a LlamaIndex ``LLM``.

    Raises:
        TypeError: Any other object (names the supported kinds).
    """
    if hasattr(llm, "generate") and hasattr(llm, "count_tokens"):  # HFGenerator, VLLMGenerator
        return lambda prompts: [g.text for g in llm.generate(list(prompts), max_new_tokens,
                                                             stop=("\n",))]
    try:
        from langchain_core.language_models import BaseLanguageModel
    except ImportError:  # the langchain extra is optional
        BaseLanguageModel = ()  # noqa: N806
    if BaseLanguageModel and isinstance(llm, BaseLanguageModel):
        def langchain(prompts: Sequence[str]) -> list[str]:
            out = llm.batch(list(prompts), return_exceptions=True)
            return [getattr(o, "content", o) if not isinstance(o, Exception) else ""
                    for o in out]
        return langchain
    try:
        from llama_index.core.llms import LLM
    except ImportError:
        LLM = ()  # noqa: N806
    if LLM and isinstance(llm, LLM):
        return lambda prompts: [llm.complete(p).text for p in prompts]
    raise TypeError(f"the question writer must be an HFGenerator / VLLMGenerator, a LangChain "
                    f"language model or a LlamaIndex LLM, got {type(llm).__name__}")


# --- the run ---------------------------------------------------------------------------------

def corpus_digest(passages: Sequence[Passage]) -> str:
    digest = hashlib.sha256()
    for p in passages:
        digest.update(json.dumps([p.id, p.title, p.text]).encode())
    return digest.hexdigest()


def _sample(passages: list[Passage], size: int | None, seed: int) -> list[Passage]:
    if size is None or size >= len(passages):
        return passages
    def key(p: Passage) -> bytes:
        return hashlib.sha256(f"{seed}|{p.id}".encode()).digest()
    return sorted(passages, key=key)[:size]


def _append(path: Path, records: Sequence[dict]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)
        handle.flush()
        os.fsync(handle.fileno())


def _read_records(path: Path) -> list[dict]:
    """Records of a JSON-lines file; a last line cut short by a kill is dropped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def make_questions(corpus: str | os.PathLike[str] | Sequence[Passage],
                   output: str | os.PathLike[str], llm: Any,
                   settings: SyntheticSettings = SyntheticSettings(),
                   answerer: Any = None, show_progress: bool = True) -> dict[str, Any]:
    """Write synthetic questions for ``corpus`` into ``output`` (ODQA layout), resumably.

    Args:
        corpus: Passages or a JSON-lines corpus file.
        output: The output folder: ``odqa/corpus.jsonl``, ``odqa/dev_questions.jsonl``,
            ``progress.jsonl`` (every passage done, with why a pair was dropped) and
            ``synthetic.json`` (settings, the corpus hash, counts, and ``timing``: seconds
            spent writing and checking, with the passages and questions they produced, summed
            over resumed runs).
        llm: The question writer (see :func:`as_writer`).
        settings: Sample, seed and filters.
        answerer: The LM of the ``answer`` round trip (any kind :func:`as_writer` takes;
            default: ``llm``), asked the question over the passage with the project's answer
            prompt.
        show_progress: Progress bar over passages.

    Returns:
        The counts written to the manifest.

    Raises:
        ValueError: ``output`` holds questions of another corpus (names both hashes), or the
            corpus has duplicate ids.
    """
    passages = load_passages(corpus) if isinstance(corpus, (str, os.PathLike)) else \
        check_corpus(corpus)
    output = Path(output)
    digest = corpus_digest(passages)
    manifest_file = output / MANIFEST
    found: dict[str, Any] = {}
    if manifest_file.is_file():
        found = json.loads(manifest_file.read_text(encoding="utf-8"))
        if found.get("corpus_sha256") != digest:
            raise ValueError(f"{output} holds questions of another corpus "
                             f"(sha256 {found.get('corpus_sha256')}); this corpus is {digest}: "
                             "choose another --output (nothing was overwritten)")
    odqa = output / "odqa"
    odqa.mkdir(parents=True, exist_ok=True)
    if not (odqa / "corpus.jsonl").is_file():
        save_passages(odqa / "corpus.jsonl", passages)
    write = as_writer(llm)
    round_trip = _round_trip(passages, settings, answerer if answerer is not None else llm)
    done = {r["passage_id"] for r in _read_records(output / PROGRESS)}
    seen = {normalize_answer(q["question"]) for q in _read_records(odqa / "dev_questions.jsonl")}
    todo = [p for p in _sample(passages, settings.passages, settings.seed) if p.id not in done]
    timing = dict(found.get("timing") or {"seconds": 0.0, "passages": 0, "questions": 0})
    manifest = {"corpus_sha256": digest, "settings": asdict(settings),
                "prompt": QUESTION_PROMPT, "writer": type(llm).__name__, "timing": timing}
    manifest_file.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    bar = tqdm(total=len(todo), desc="synthetic questions", unit="passage",
               disable=not show_progress)
    for start in range(0, len(todo), settings.batch_size):
        batch = todo[start:start + settings.batch_size]
        started = time.perf_counter()
        progress, accepted = _one_batch(batch, write, round_trip, settings, seen)
        _append(odqa / "dev_questions.jsonl", accepted)  # questions first: a kill in between
        _append(output / PROGRESS, progress)  # redoes the batch, dedup drops the repeats
        timing["seconds"] = round(timing["seconds"] + time.perf_counter() - started, 3)
        timing["passages"] += len(batch)
        timing["questions"] += len(accepted)
        manifest_file.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        bar.update(len(batch))
    bar.close()
    counts = _counts(output)
    manifest["counts"] = counts
    manifest_file.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return counts


RoundTrip = Callable[[Sequence[tuple[Passage, str, str]]], list[tuple[bool, dict[str, Any]]]]


def _round_trip(passages: Sequence[Passage], settings: SyntheticSettings,
                answerer: Any) -> RoundTrip:
    """The round-trip check of ``(passage, answer, question)`` triples: whether each passes,
    and the score recorded with it (``round_trip_rank``, 1-based or ``None`` beyond the
    depth; or ``round_trip_f1``)."""
    if settings.round_trip == "retrieval":
        from .retrieval import BM25Retriever

        bm25 = BM25Retriever()
        bm25.index(passages)
        depth = min(settings.round_trip_depth, len(passages))

        def retrieval(triples: Sequence[tuple[Passage, str, str]]) -> list[tuple[bool, dict]]:
            found = bm25.search([q for _, _, q in triples], depth)
            ranks = [r.ids.index(p.id) + 1 if p.id in r.ids else None
                     for (p, _, _), r in zip(triples, found)]
            return [(rank is not None, {"round_trip_rank": rank}) for rank in ranks]
        return retrieval
    if settings.round_trip == "answer":
        from .generation import PromptTemplate

        answer = as_writer(answerer, max_new_tokens=16)
        template = PromptTemplate(n_shots=3, max_passage_words=settings.max_passage_words)

        def answered(triples: Sequence[tuple[Passage, str, str]]) -> list[tuple[bool, dict]]:
            replies = answer([template.render(q, [answer_view(p, a, settings.max_passage_words)])
                              for p, a, q in triples])
            scores = [round(f1_score(PromptTemplate.clean_answer(r or ""), [a]), 3)
                      for r, (_, a, _) in zip(replies, triples)]
            return [(f >= settings.min_round_trip_f1, {"round_trip_f1": f}) for f in scores]
        return answered
    return lambda triples: [(True, {}) for _ in triples]


def _one_batch(batch: Sequence[Passage], write: Writer, round_trip: RoundTrip,
               settings: SyntheticSettings, seen: set[str]) -> tuple[list[dict], list[dict]]:
    """Progress records (one per passage) and the accepted question records of one batch."""
    progress: list[dict] = []
    chosen: list[tuple[Passage, str]] = []
    for passage in batch:
        span = choose_span(passage, settings)
        if span is None:
            progress.append({"passage_id": passage.id, "status": "no_answer_span"})
            continue
        chosen.append((passage, span))
    texts = write([question_prompt(p, a, settings.max_passage_words) for p, a in chosen]) \
        if chosen else []
    checked: list[tuple[Passage, str, str]] = []
    for (passage, span), text in zip(chosen, texts):
        question = clean_question(text or "")
        status = "ok"
        if question is None:
            status = "malformed_question"
        elif not has_answer([span], passage.full_text()):
            status = "answer_not_in_passage"
        elif normalize_answer(span) in normalize_answer(question):
            status = "question_contains_answer"
        elif normalize_answer(question) in seen:
            status = "duplicate"
        if status != "ok":
            progress.append({"passage_id": passage.id, "status": status, "answer": span,
                             "question": question or (text or "")[:200]})
        else:
            checked.append((passage, span, question))
    accepted = []
    for (passage, span, question), (passed, score) in zip(checked,
                                                          round_trip(checked) if checked else []):
        record = {"passage_id": passage.id, "answer": span, "question": question, **score}
        if not passed:
            progress.append({**record, "status": "round_trip_failed"})
            continue
        seen.add(normalize_answer(question))
        progress.append({**record, "status": "ok"})
        accepted.append({"dataset": SYNTHETIC_DATASET,
                         "id": f"syn-{hashlib.sha256(question.encode()).hexdigest()[:12]}",
                         "question": question, "answers": [span],
                         "gold_passage_ids": [passage.id],
                         "source": {"passage_id": passage.id, **score}})
    return progress, accepted


def _counts(output: Path) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for record in _read_records(output / PROGRESS):
        statuses[record["status"]] = statuses.get(record["status"], 0) + 1
    passages = sum(statuses.values())
    questions = len(_read_records(output / "odqa" / "dev_questions.jsonl"))
    return {"passages": passages, "questions": questions, "by_status": statuses,
            "pass_rate": questions / passages if passages else 0.0}
