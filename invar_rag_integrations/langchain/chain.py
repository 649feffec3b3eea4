"""``build_rag_chain``: question -> {answer, source_documents} as one LangChain Runnable."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseLanguageModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableLambda, RunnableParallel, RunnablePassthrough

from ..generation import PromptTemplate
from ..rag import RAGPipeline, Source
from .llm import InvarLLM
from .retriever import document_passage


def build_rag_chain(retriever: BaseRetriever, llm: BaseLanguageModel,
                    template: PromptTemplate | None = None,
                    abstain: bool | None = None) -> Runnable[str, dict[str, Any]]:
    """Retrieve, fill the prompt template, generate.

    The Runnable takes a question string and returns ``{"question", "source_documents",
    "answer"}``; it supports ``invoke``, ``batch``, ``stream`` (the answer arrives in pieces
    after the sources) and their async forms.

    When abstaining, the answer is :data:`DECLINED_TEXT` where the evidence is weak, and the
    output also holds ``declined`` (bool) and ``confidence`` (the abstention model's); the
    answer is judged whole, so ``stream`` gives it in one piece. The documents' relevance
    probabilities (set by :class:`InvarRetriever` and ``InvarReranker``) are part of the
    evidence.

    Args:
        retriever: Any LangChain retriever (e.g. :class:`InvarRetriever`).
        llm: Any LangChain LLM (e.g. :class:`InvarLLM`).
        template: The prompt template (default: the Invar LLM's pipeline template, so the
            trained generator sees its own format and token budget).
        abstain: Decline when the evidence is weak (``None``: as the Invar LLM's pipeline
            says, from its system; needs an :class:`InvarLLM` whose pipeline has an abstention
            model).
    """
    pipeline = llm.pipeline if isinstance(llm, InvarLLM) else None
    if pipeline is None and abstain:
        raise ValueError("abstaining needs an InvarLLM (its pipeline's abstention model)")
    template = template or (pipeline.template if pipeline else PromptTemplate())
    retrieve = RunnableParallel(question=RunnablePassthrough(), source_documents=retriever)
    if pipeline is not None and pipeline.resolve_abstain(abstain):
        if template is not pipeline.template:
            raise ValueError("abstaining answers with the pipeline's own prompt template")
        return retrieve.with_types(input_type=str) | RunnableLambda(
            lambda inputs: {**inputs, **judged_answer(pipeline, inputs)})

    def prompt(inputs: dict[str, Any]) -> str:
        if pipeline is not None and template is pipeline.template:  # within its token budget
            return pipeline.prompt(inputs["question"], document_sources(inputs)).text
        return template.render(inputs["question"],
                               [s.passage for s in document_sources(inputs)])

    answer = RunnableLambda(prompt) | llm | StrOutputParser()
    # the question is validated once, by the retriever (the Invar core checks queries and k)
    return retrieve.with_types(input_type=str) | \
        RunnablePassthrough.assign(answer=answer)


def document_sources(inputs: dict[str, Any]) -> list[Source]:
    """The retrieved documents as sources, scored by their relevance probability (metadata
    ``relevance_score`` from ``InvarReranker``, ``score`` from :class:`InvarRetriever`; 0
    without)."""
    return [Source(document_passage(d), float(d.metadata.get("relevance_score",
                                                             d.metadata.get("score", 0.0))))
            for d in inputs["source_documents"]]


def judged_answer(pipeline: RAGPipeline, inputs: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's answer to the question from the documents, or its decline."""
    answer = pipeline.answer_batch([inputs["question"]], sources=[document_sources(inputs)],
                                   abstain=True)[0]
    return {"answer": answer.text, "declined": answer.declined,
            "confidence": answer.confidence}
