"""``InvarLLM``: the generator (its adapter on the shared base model) as a LangChain LLM."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.llms import LLM
from langchain_core.outputs import GenerationChunk
from pydantic import PrivateAttr

from ..rag import RAGPipeline, check_pipeline, reject_unknown


class InvarLLM(LLM):
    """Greedy completions by a pipeline's generator, cut at the stop strings (default: newline,
    where the trained generator ends its answer), without surrounding white space; a prompt too
    long for the model is a ``ValueError``.

    Args:
        pipeline: The pipeline whose generator, adapter and ``max_new_tokens`` are used.
    """

    stop: list[str] = ["\n"]
    _pipeline: RAGPipeline = PrivateAttr()

    def __init__(self, *, pipeline: RAGPipeline, stop: list[str] | None = None,
                 tags: list[str] | None = None, metadata: dict[str, Any] | None = None):
        super().__init__(stop=["\n"] if stop is None else stop, tags=tags, metadata=metadata)
        self._pipeline = check_pipeline(pipeline)

    @classmethod
    def from_pretrained(cls, system_dir: str | os.PathLike[str], **kwargs: Any) -> InvarLLM:
        from ..rag import InvarRAG

        return cls(pipeline=InvarRAG.from_pretrained(system_dir), **kwargs)

    @property
    def pipeline(self) -> RAGPipeline:
        return self._pipeline

    @property
    def _llm_type(self) -> str:
        return "invar-rag-generator"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"adapter": self._pipeline.adapter,
                "max_new_tokens": self._pipeline.settings.max_new_tokens}

    def _stop(self, stop: list[str] | None, kwargs: dict[str, Any]) -> list[str]:
        reject_unknown(kwargs)
        return [*self.stop, *(stop or [])]

    def _call(self, prompt: str, stop: list[str] | None = None,
              run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> str:
        return self._pipeline.complete(prompt, self._stop(stop, kwargs))

    def _stream(self, prompt: str, stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None,
                **kwargs: Any) -> Iterator[GenerationChunk]:
        for piece in self._pipeline.stream_completion(prompt, self._stop(stop, kwargs)):
            chunk = GenerationChunk(text=piece)
            if run_manager is not None:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
