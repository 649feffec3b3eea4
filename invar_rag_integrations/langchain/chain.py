"""``build_rag_chain``: question -> {answer, source_documents} as one LangChain Runnable."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseLanguageModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableLambda, RunnableParallel, RunnablePassthrough

from ..data import Passage
from ..generation import PromptTemplate
from ..rag import Source
from .llm import InvarLLM


def build_rag_chain(retriever: BaseRetriever, llm: BaseLanguageModel,
                    template: PromptTemplate | None = None) -> Runnable[str, dict[str, Any]]:
    """Retrieve, fill the prompt template, generate.

    The Runnable takes a question string and returns ``{"question", "source_documents",
    "answer"}``; it supports ``invoke``, ``batch``, ``stream`` (the answer arrives in pieces
    after the sources) and their async forms.

    Args:
        retriever: Any LangChain retriever (e.g. :class:`InvarRetriever`).
        llm: Any LangChain LLM (e.g. :class:`InvarLLM`).
        template: The prompt template (default: the Invar LLM's pipeline template, so the
            trained generator sees its own format and token budget).
    """
    pipeline = llm.pipeline if isinstance(llm, InvarLLM) else None
    template = template or (pipeline.template if pipeline else PromptTemplate())

    def prompt(inputs: dict[str, Any]) -> str:
        passages = [Passage(d.id or str(i), d.page_content, str(d.metadata.get("title") or ""))
                    for i, d in enumerate(inputs["source_documents"])]
        if pipeline is not None and template is pipeline.template:  # within its token budget
            return pipeline.prompt(inputs["question"], [Source(p, 0.0) for p in passages]).text
        return template.render(inputs["question"], passages)

    retrieve = RunnableParallel(question=RunnablePassthrough(), source_documents=retriever)
    answer = RunnableLambda(prompt) | llm | StrOutputParser()
    # the question is validated once, by the retriever (the Invar core checks queries and k)
    return retrieve.with_types(input_type=str) | \
        RunnablePassthrough.assign(answer=answer)

