"""Retrieve-then-generate pipelines: :class:`InvarRAG` (a trained system) and the baselines
(any retriever or none, the base LM or an adapter) behind the same :class:`RAGPipeline`."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import Passage, check_corpus, load_passages
from .generation import GENERATION_BACKENDS
from .generation.artifacts import (
    GENERATOR_ADAPTER,
    GeneratorSettings,
    generator_entry,
    load_generator,
)
from .generation.hf import HFGenerator
from .generation.prompts import FittedPrompt, PromptTemplate
from .retrieval.base import (
    PASSAGES_FILE,
    Retriever,
    SearchResult,
    check_instance,
    check_k,
    check_queries,
    check_text,
)


def check_pipeline(pipeline: Any) -> RAGPipeline:
    """For the framework wrappers: a loaded pipeline, not a path."""
    return check_instance(pipeline, RAGPipeline, "pipeline",
                          "InvarRAG.from_pretrained(system_dir)")


def reject_unknown(kwargs: dict[str, Any]) -> None:
    """Framework LLM calls take no generation options beyond the stop strings: greedy decoding
    and ``max_new_tokens`` come from the trained system's settings."""
    if kwargs:
        raise ValueError(f"unknown generation arguments {sorted(kwargs)}")


def stripped(pieces: Iterable[str]) -> Iterator[str]:
    """The pieces of a text re-cut so that they join to the text stripped of surrounding white
    space (trailing white space is held back until more text follows)."""
    started, pending = False, ""
    for piece in pieces:
        text = pending + piece
        if not started:
            text = text.lstrip()
            started = bool(text)
        body = text.rstrip()
        pending = text[len(body):]
        if body:
            yield body


@dataclass(frozen=True)
class Source:
    """A retrieved passage and its retrieval score (with the Invar retriever: the probability
    that it holds an answer to the question)."""

    passage: Passage
    score: float


@dataclass(frozen=True)
class Answer:
    """An answer with the passages it was generated from.

    Attributes:
        question: The question as asked.
        text: The answer.
        sources: Retrieved passages, best first (empty for closed-book answers).
        num_tokens: Generated tokens.
        truncation: What was cut to fit the prompt budget ("" when nothing was).
    """

    question: str
    text: str
    sources: list[Source]
    num_tokens: int = 0
    truncation: str = ""


class RAGPipeline:
    """Retrieve the top-``k`` passages, put them in the prompt, generate a short answer.

    Args:
        generator: An :class:`HFGenerator` (its model may hold several adapters) or a
            ``VLLMGenerator`` (an engine serving several adapters).
        retriever: An indexed retriever, or ``None`` for closed-book answers.
        passages: The indexed passages (their texts go into prompts).
        settings: ``k``, token budgets (the LoRA fields are unused here).
        template: The prompt template.
        adapter: The generator's peft adapter (``None``: the base model).
        batch_size: Generation batch size.
    """

    def __init__(self, generator: Any, retriever: Retriever | None = None,
                 passages: Sequence[Passage] = (), settings: GeneratorSettings | None = None,
                 template: PromptTemplate | None = None, adapter: str | None = None,
                 batch_size: int = 8):
        self.generator, self.retriever, self.adapter = generator, retriever, adapter
        self.settings = settings or GeneratorSettings()
        self.template = template or PromptTemplate()
        self.batch_size = batch_size
        self.passages: dict[str, Passage] = {p.id: p for p in passages}
        if retriever is not None and retriever.passage_ids:
            self._check_covered(retriever.passage_ids)
        self.max_prompt_tokens = self.settings.prompt_budget(self.context_window)
        self._warned = False

    def _check_covered(self, ids: Sequence[str]) -> None:
        missing = [pid for pid in ids if pid not in self.passages]
        if missing:
            raise ValueError(f"the index holds {len(missing)} passage ids without passage text "
                             f"(e.g. {missing[0]!r}); pass the corpus it was built from")

    def index(self, passages: Sequence[Passage]) -> None:
        """Index ``passages`` with the retriever (replacing its index) and keep their texts."""
        if self.retriever is None:
            raise RuntimeError("a closed-book pipeline has no retriever to index with")
        passages = check_corpus(passages)
        self.retriever.index(passages)
        self.passages = {p.id: p for p in passages}

    # --- retrieval ------------------------------------------------------------------------

    def retrieve_batch(self, queries: Sequence[str], k: int | None = None) -> list[list[Source]]:
        """Top-``k`` sources (default ``settings.k``) for each query."""
        queries = check_queries(queries)
        if self.retriever is None:
            return [[] for _ in queries]
        k = self.settings.k if k is None else check_k(k)
        return self.sources(self.retriever.search(queries, k))

    def sources(self, results: Sequence[SearchResult]) -> list[list[Source]]:
        """Search results as sources (passage texts looked up in the indexed corpus)."""
        return [[Source(self.passages[i], s) for i, s in zip(r.ids, r.scores)] for r in results]

    def retrieve(self, query: str, k: int | None = None) -> list[Source]:
        """Top-``k`` sources for one query."""
        return self.retrieve_batch([query], k)[0]

    # --- answering ------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` for the generator (the tokenizer may be shared across threads)."""
        return self.generator.count_tokens(text)

    def prompt(self, question: str, sources: Sequence[Source]) -> FittedPrompt:
        """The prompt for ``question`` within the token budget (warns once when it is cut)."""
        fitted = self.template.fit(question, [s.passage for s in sources], self.count_tokens,
                                   self.max_prompt_tokens)
        if fitted.truncated and not self._warned:
            self._warned = True
            warnings.warn(f"a prompt exceeded {self.max_prompt_tokens} tokens: "
                          f"{fitted.describe()} (reported in Answer.truncation; warned once)",
                          stacklevel=2)
        return fitted

    def answer_batch(self, questions: Sequence[str], k: int | None = None,
                     sources: Sequence[Sequence[Source]] | None = None,
                     show_progress: bool = False) -> list[Answer]:
        """Answer every question; ``sources`` replaces retrieval (e.g. cached results)."""
        questions = check_queries(questions)
        if sources is None:
            sources = self.retrieve_batch(questions, k)
        elif len(sources) != len(questions):
            raise ValueError(f"{len(sources)} source lists for {len(questions)} questions")
        prompts = [self.prompt(q, s) for q, s in zip(questions, sources)]
        generations = self.generator.generate(
            [p.text for p in prompts], max_new_tokens=self.settings.max_new_tokens,
            batch_size=self.batch_size, show_progress=show_progress, adapter=self.adapter)
        return [Answer(q, self.template.clean_answer(g.text), list(s), g.num_tokens,
                       p.describe())
                for q, s, p, g in zip(questions, sources, prompts, generations)]

    def answer(self, question: str, k: int | None = None) -> Answer:
        """Answer one question with its sources."""
        return self.answer_batch([question], k)[0]

    def stream(self, question: str, sources: Sequence[Source] | None = None,
               k: int | None = None) -> Iterator[str]:
        """Yield the answer to one question piece by piece (first line only)."""
        if sources is None:
            sources = self.retrieve(question, k)
        yield from stripped(self.generator.stream(self.prompt(question, sources).text,
                                                  max_new_tokens=self.settings.max_new_tokens,
                                                  adapter=self.adapter))

    # --- completion of formatted prompts (the framework LLMs) ------------------------------

    @property
    def context_window(self) -> int:
        """The base model's context length in tokens (prompt plus answer)."""
        return self.generator.context_window

    def complete(self, prompt: str, stop: Sequence[str] = ("\n",)) -> str:
        """The generator's greedy completion of an already formatted prompt, stripped of
        surrounding white space."""
        [generation] = self.generator.generate([self._completion_prompt(prompt)],
                                               **self._completion_options(stop))
        return generation.text.strip()

    def stream_completion(self, prompt: str, stop: Sequence[str] = ("\n",)) -> Iterator[str]:
        """:meth:`complete` piece by piece (the pieces join to the same text); the prompt is
        checked at once, before the first piece."""
        return stripped(self.generator.stream(self._completion_prompt(prompt),
                                              **self._completion_options(stop)))

    def _completion_prompt(self, prompt: str) -> str:
        prompt = check_text(prompt, "prompt")
        length = self.count_tokens(prompt)
        room = self.context_window - self.settings.max_new_tokens
        if length > room:
            raise ValueError(f"the prompt has {length} tokens; the model takes at most {room} "
                             f"({self.context_window} minus {self.settings.max_new_tokens} "
                             "for the answer)")
        return prompt

    def _completion_options(self, stop: Sequence[str]) -> dict[str, Any]:
        return {"max_new_tokens": self.settings.max_new_tokens, "stop": list(stop),
                "adapter": self.adapter}


class InvarRAG(RAGPipeline):
    """A trained Invar-RAG system: the Invar retriever and the ``generator`` adapter on one base
    model, with the prompt and settings the generator was trained with."""

    @classmethod
    def from_pretrained(cls, system_dir: str | os.PathLike[str],
                        corpus: str | os.PathLike[str] | Sequence[Passage] | None = None,
                        index: str | os.PathLike[str] | None = None,
                        base_model: str | None = None,
                        generator_dir: str | os.PathLike[str] | None = None,
                        backend: str = "hf", engine_options: dict[str, Any] | None = None,
                        score_on_engine: bool | None = None, **kwargs: Any) -> InvarRAG:
        """Load base model, coarse encoder, the scorer (with its adapter or head, if any), the
        generator adapter and the index of one system.

        Args:
            system_dir: The system directory (``invar_rag.json``).
            corpus: Passages or a JSON-lines corpus file. With a saved index (``index`` or
                ``<system_dir>/index``) it supplies the passage texts (default: the index's own
                ``passages.jsonl``); without one, it is indexed now.
            index: A saved index folder (default ``<system_dir>/index`` when present).
            base_model: Override the base model location (must be the same model).
            generator_dir: Take the generator adapter from another system directory.
            backend: ``hf`` (the generator adapter on the scorer's copy of the base model),
                ``vllm`` (a vLLM engine serving the base model and the generator adapter;
                retrieval stays in-process) or ``vllm-merged`` (a vLLM engine serving a copy of
                the base model with the generator adapter merged in: on CPUs far faster than
                vLLM's LoRA path, but the base model is not served beside it).
            engine_options: ``vllm.LLM`` settings for the ``vllm`` backend.
            score_on_engine: ``vllm`` backend: the scorer reads its candidates through the same
                engine (prompt log-probabilities under the ``retriever`` adapter) instead of
                the HF model. Default: on a GPU only (on CPUs with AMX, the HF scorer in
                bfloat16 was faster; see BENCHMARKS.md).
            **kwargs: Passed to the constructor (e.g. ``batch_size``).
        """
        from .invar import TwoStageRetriever
        from .invar.two_stage import INDEX_DIR
        from .system import base_of, model_identity

        if backend not in GENERATION_BACKENDS:
            raise ValueError(f"backend must be one of {GENERATION_BACKENDS}, got {backend!r}")
        if (engine_options and backend == "hf") or (score_on_engine and backend != "vllm"):
            raise ValueError("engine_options are settings of the vllm backends, score_on_engine "
                             "of the vllm backend")
        retriever = TwoStageRetriever.from_pretrained(system_dir, index, base_model)
        if backend != "hf":
            from .generation.vllm_backend import VLLMGenerator, merged_model

            base_lm = base_of(retriever.scorer.lm)
            folder, settings, template = generator_entry(generator_dir or system_dir,
                                                         model_identity(base_lm))
            base = base_lm.invar_source
            if backend == "vllm-merged":
                model, adapters, merged = merged_model(base.path, folder), {}, GENERATOR_ADAPTER
            else:
                model, adapters, merged = base.path, {GENERATOR_ADAPTER: folder}, None
                if retriever.scorer.adapter is not None:
                    adapters[retriever.scorer.adapter] = \
                        Path(system_dir) / retriever.scorer.adapter
            generator: Any = VLLMGenerator(model, adapters, name=base.name, merged=merged,
                                           **(engine_options or {}))
            if backend == "vllm" and (generator.on_gpu if score_on_engine is None
                                      else score_on_engine):
                retriever.scorer.use_engine(generator)
        else:
            lm, settings, template = load_generator(retriever.scorer.lm,
                                                    generator_dir or system_dir)
            retriever.scorer.lm = lm  # one base model, now holding both adapters
            generator = HFGenerator(lm, retriever.scorer.tokenizer)
        passages: list[Passage] = []
        if isinstance(corpus, (str, os.PathLike)):
            passages = load_passages(corpus)
        elif corpus is not None:
            passages = check_corpus(corpus)
        elif retriever.passage_ids:
            folder = Path(index) if index is not None else Path(system_dir) / INDEX_DIR
            passages = load_passages(folder / PASSAGES_FILE)
        rag = cls(generator, retriever, passages, settings, template, GENERATOR_ADAPTER,
                  **kwargs)
        if not retriever.passage_ids and passages:
            rag.index(passages)
        return rag
