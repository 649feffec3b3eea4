"""Retrieve-then-generate pipelines: :class:`InvarRAG` (a trained system) and the baselines
(any retriever or none, the base LM or an adapter) behind the same :class:`RAGPipeline`."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .answer_match import has_answer
from .data import Passage, check_corpus, load_passages
from .generation import GENERATION_BACKENDS
from .generation.abstention import DECLINED_TEXT, AbstentionModel, Evidence, load_abstention
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
        text: The answer, or :data:`DECLINED_TEXT` when the RAG declined to answer.
        sources: Retrieved passages, best first (empty for closed-book answers): the passages
            considered, also when it declined.
        num_tokens: Generated tokens.
        truncation: What was cut to fit the prompt budget ("" when nothing was).
        declined: Whether the RAG declined (the evidence was below the abstention threshold).
        confidence: The abstention model's confidence that the answer rests on passages that
            hold it (``None`` when no abstention model was applied).
        evidence: The signals the confidence was computed from (``None`` when not computed).
    """

    question: str
    text: str
    sources: list[Source]
    num_tokens: int = 0
    truncation: str = ""
    declined: bool = False
    confidence: float | None = None
    evidence: Evidence | None = None


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
        abstention: The model that decides when to decline (``None``: never declines); it
            reads the sources' scores as relevance probabilities, as the Invar retriever
            gives them.
        abstain: Decline by default when the confidence is below the model's threshold (each
            call may say otherwise).
    """

    def __init__(self, generator: Any, retriever: Retriever | None = None,
                 passages: Sequence[Passage] = (), settings: GeneratorSettings | None = None,
                 template: PromptTemplate | None = None, adapter: str | None = None,
                 batch_size: int = 8, abstention: AbstentionModel | None = None,
                 abstain: bool = False):
        self.generator, self.retriever, self.adapter = generator, retriever, adapter
        self.abstention = abstention
        self.abstain = self.resolve_abstain(abstain)
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

    def resolve_abstain(self, abstain: bool | None) -> bool:
        """The call's ``abstain`` (``None``: the pipeline's default), checked."""
        if abstain is None:
            return self.abstain
        if abstain and self.abstention is None:
            raise ValueError("this pipeline has no abstention model to decline with: fit one "
                             "with `invar-rag fit-abstention SYSTEM` (it is stored in the "
                             "system) or pass abstention=AbstentionModel(...)")
        return bool(abstain)

    def answer_batch(self, questions: Sequence[str], k: int | None = None,
                     sources: Sequence[Sequence[Source]] | None = None,
                     show_progress: bool = False, abstain: bool | None = None,
                     evidence: bool = False) -> list[Answer]:
        """Answer every question; ``sources`` replaces retrieval (e.g. cached results).

        Args:
            abstain: Decline ("not found in the documents") when the abstention model's
                confidence is below its threshold (``None``: the pipeline's default).
            evidence: Compute each answer's evidence (every signal) and confidence also when
                not declining (one extra short pass of the generator per answer; when only
                abstaining, it runs if the model reads its signals).
        """
        questions = check_queries(questions)
        abstain = self.resolve_abstain(abstain)
        if sources is None:
            sources = self.retrieve_batch(questions, k)
        elif len(sources) != len(questions):
            raise ValueError(f"{len(sources)} source lists for {len(questions)} questions")
        prompts = [self.prompt(q, s) for q, s in zip(questions, sources)]
        generations = self.generator.generate(
            [p.text for p in prompts], max_new_tokens=self.settings.max_new_tokens,
            stop=self.template.stop, batch_size=self.batch_size, show_progress=show_progress,
            adapter=self.adapter)
        texts = [self.template.clean_answer(g.text) for g in generations]
        found: list[Evidence | None] = [None] * len(questions)
        if abstain or evidence:
            found = self.evidence(questions, sources, texts, generations, evidence or (
                self.abstention is not None and self.abstention.reads_closed_book))
        answers = []
        for q, s, p, g, text, e in zip(questions, sources, prompts, generations, texts, found):
            confidence = None
            if e is not None and self.abstention is not None:
                confidence = self.abstention.confidence(e)
            declined = abstain and confidence is not None and \
                confidence < self.abstention.threshold
            answers.append(Answer(q, DECLINED_TEXT if declined else text, list(s), g.num_tokens,
                                  p.describe(), declined, confidence, e))
        return answers

    def evidence(self, questions: Sequence[str], sources: Sequence[Sequence[Source]],
                 texts: Sequence[str], generations: Sequence[Any],
                 closed_book: bool = True) -> list[Evidence]:
        """The evidence behind each generated answer: its sources' scores, its log-probability
        with the passages (from the generation) and without them (one short pass of the
        generator; ``closed_book=False`` skips it), and whether its words occur in the
        passages."""
        closed: dict[int, tuple[float, int]] = {}
        if closed_book:
            spoken = [i for i, t in enumerate(texts) if t.strip()]
            closed = dict.fromkeys(range(len(texts)), (0.0, 0))
            closed.update(zip(spoken, self.generator.answer_logprobs(
                [self.template.render(questions[i]) for i in spoken],
                [self.template.continuation(texts[i]) for i in spoken], adapter=self.adapter,
                batch_size=self.batch_size)))
        return [Evidence.of([x.score for x in s], g.logprob, g.num_tokens, closed.get(i),
                            bool(t.strip()) and has_answer([t], "\n".join(
                                x.passage.full_text() for x in s)))
                for i, (s, t, g) in enumerate(zip(sources, texts, generations))]

    def answer(self, question: str, k: int | None = None, abstain: bool | None = None) -> Answer:
        """Answer one question with its sources (``abstain``: see :meth:`answer_batch`)."""
        return self.answer_batch([question], k, abstain=abstain)[0]

    def stream(self, question: str, sources: Sequence[Source] | None = None,
               k: int | None = None, abstain: bool | None = None) -> Iterator[str]:
        """Yield the answer to one question piece by piece (first line only). When abstaining,
        it is judged whole first and comes as one piece (the answer or :data:`DECLINED_TEXT`)."""
        abstain = self.resolve_abstain(abstain)
        if sources is None:
            sources = self.retrieve(question, k)
        if abstain:
            yield self.answer_batch([question], sources=[sources], abstain=True)[0].text
            return
        yield from stripped(self.generator.stream(self.prompt(question, sources).text,
                                                  max_new_tokens=self.settings.max_new_tokens,
                                                  stop=self.template.stop, adapter=self.adapter))

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
        stop = list(dict.fromkeys([*stop, *self.template.turn_end]))  # a chat turn ends too
        return {"max_new_tokens": self.settings.max_new_tokens, "stop": stop,
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
                        score_on_engine: bool | None = None, abstain: bool | None = None,
                        **kwargs: Any) -> InvarRAG:
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
            abstain: Decline by default when the evidence is weak (``None``: as the system's
                abstention model says; ``True`` needs one, fitted by ``invar-rag
                fit-abstention``). Each call may still say otherwise.
            **kwargs: Passed to the constructor (e.g. ``batch_size``).
        """
        from .invar import TwoStageRetriever
        from .invar.two_stage import INDEX_DIR
        from .system import base_of, model_identity, read_manifest

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
        abstention, on_by_default = None, False
        if generator_dir is None or Path(generator_dir).resolve() == Path(system_dir).resolve():
            abstention, on_by_default = load_abstention(read_manifest(system_dir))
        rag = cls(generator, retriever, passages, settings, template, GENERATOR_ADAPTER,
                  abstention=abstention,
                  abstain=on_by_default if abstain is None else abstain, **kwargs)
        if not retriever.passage_ids and passages:
            rag.index(passages)
        return rag
