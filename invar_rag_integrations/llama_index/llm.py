"""``InvarLLM``: the generator (its adapter on the shared base model) as a LlamaIndex LLM."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.prompts import PromptTemplate as LlamaPromptTemplate

from ..generation import PromptTemplate
from ..rag import RAGPipeline, check_pipeline, reject_unknown


class InvarLLM(CustomLLM):
    """Complete prompts with the generator of a :class:`~invar_rag_integrations.rag.RAGPipeline`
    (greedy, cut at the stop strings; a prompt too long for the model is a ``ValueError``).

    Use :meth:`qa_template` as the query engine's ``text_qa_template`` so questions reach the
    generator in the prompt format it was trained on.

    Args:
        pipeline: The pipeline whose generator, adapter, template and budgets are used
            (``InvarRAG.from_pretrained(...)``).
        stop: Stop strings (the trained generator ends its answer with a newline).
    """

    max_new_tokens: int = Field(description="Longest completion in tokens.")
    context_window: int = Field(description="The model's context length in tokens.")
    model_name: str = Field(description="The base model and adapter.")
    stop: list[str] = Field(description="Stop strings.")
    _pipeline: RAGPipeline = PrivateAttr()

    def __init__(self, pipeline: RAGPipeline, stop: Sequence[str] = ("\n",)):
        pipeline = check_pipeline(pipeline)
        super().__init__(max_new_tokens=pipeline.settings.max_new_tokens,
                         context_window=pipeline.context_window,
                         model_name=f"{pipeline.generator.name}+{pipeline.adapter or 'base'}",
                         stop=list(stop))
        self._pipeline = pipeline

    @classmethod
    def from_pretrained(cls, system_dir: str | os.PathLike[str], **kwargs: Any) -> InvarLLM:
        from ..rag import InvarRAG

        return cls(InvarRAG.from_pretrained(system_dir), **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "InvarLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(context_window=self.context_window, num_output=self.max_new_tokens,
                           model_name=self.model_name)

    def qa_template(self) -> LlamaPromptTemplate:
        """The pipeline's prompt with LlamaIndex's ``{context_str}`` and ``{query_str}``."""
        return qa_template(self._pipeline.template)


    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        reject_unknown(kwargs)
        return CompletionResponse(text=self._pipeline.complete(prompt, self.stop))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False,
                        **kwargs: Any) -> CompletionResponseGen:
        reject_unknown(kwargs)
        pieces = self._pipeline.stream_completion(prompt, self.stop)

        def responses() -> CompletionResponseGen:
            text = ""
            for piece in pieces:
                text += piece
                yield CompletionResponse(text=text, delta=piece)

        return responses()


def qa_template(template: PromptTemplate) -> LlamaPromptTemplate:
    """A trained prompt as a LlamaIndex QA template (``{context_str}``, ``{query_str}``), for
    query engines over any LLM, e.g. ``OpenAILike`` pointed at ``invar-rag serve``."""
    return LlamaPromptTemplate(template.with_fields("context_str", "query_str"))
