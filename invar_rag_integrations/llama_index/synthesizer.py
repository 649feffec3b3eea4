"""``InvarSynthesizer``: a query engine's answer step that may decline ("not found in the
documents"), with the decision in the response's metadata."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.response.schema import Response
from llama_index.core.response_synthesizers.base import BaseSynthesizer
from llama_index.core.schema import NodeWithScore, QueryBundle

from ..data import Passage
from ..rag import Answer, RAGPipeline, Source, check_pipeline
from ._convert import node_passages
from .llm import InvarLLM


class InvarSynthesizer(BaseSynthesizer):
    """Answer from the retrieved nodes with a pipeline's generator and, when abstaining,
    decline when the evidence is weak.

    Use it as a query engine's ``response_synthesizer`` (``RetrieverQueryEngine(retriever,
    response_synthesizer=InvarSynthesizer(rag))``). The response's text is the answer or
    :data:`~invar_rag_integrations.generation.abstention.DECLINED_TEXT`; its metadata holds,
    besides each node's metadata under its id, ``declined`` (bool) and ``confidence`` (the
    abstention model's, or ``None``). The nodes' scores are read as relevance probabilities:
    retrieve them with :class:`InvarRetriever` or rerank them with :class:`InvarReranker`.

    Args:
        pipeline: The RAG pipeline (``InvarRAG.from_pretrained(...)``).
        abstain: Decline when the confidence is below the threshold (``None``: the pipeline's
            default, from the system).
    """

    def __init__(self, pipeline: RAGPipeline, abstain: bool | None = None):
        self._pipeline = check_pipeline(pipeline)
        self._abstain = self._pipeline.resolve_abstain(abstain)
        super().__init__(llm=InvarLLM(self._pipeline))

    def _get_prompts(self) -> dict[str, Any]:
        return {}

    def _update_prompts(self, prompts: dict[str, Any]) -> None:
        if prompts:
            raise ValueError("InvarSynthesizer uses the trained generator's own prompt")

    def _answer(self, question: str, passages: Sequence[Passage],
                scores: Sequence[float]) -> Answer:
        sources = [Source(p, s) for p, s in zip(passages, scores)]
        return self._pipeline.answer_batch([question], sources=[sources],
                                           abstain=self._abstain)[0]

    def get_response(self, query_str: str, text_chunks: Sequence[str],
                     **response_kwargs: Any) -> str:
        """The answer from plain text chunks (no scores: answered, never declined)."""
        passages = [Passage(str(i), text) for i, text in enumerate(text_chunks)]
        sources = [Source(p, 0.0) for p in passages]
        return self._pipeline.answer_batch([query_str], sources=[sources],
                                           abstain=False)[0].text

    async def aget_response(self, query_str: str, text_chunks: Sequence[str],
                            **response_kwargs: Any) -> str:
        return await asyncio.to_thread(self.get_response, query_str, text_chunks)

    def synthesize(self, query: str | QueryBundle, nodes: list[NodeWithScore],
                   additional_source_nodes: Sequence[NodeWithScore] | None = None,
                   **response_kwargs: Any) -> Response:
        question = query.query_str if isinstance(query, QueryBundle) else query
        answer = self._answer(question, node_passages([n.node for n in nodes]),
                              [n.score or 0.0 for n in nodes])
        sources = list(nodes) + list(additional_source_nodes or [])
        metadata = self._get_metadata_for_response([n.node for n in sources]) or {}
        metadata.update(declined=answer.declined, confidence=answer.confidence)
        return Response(answer.text, source_nodes=sources, metadata=metadata)

    async def asynthesize(self, query: str | QueryBundle, nodes: list[NodeWithScore],
                          additional_source_nodes: Sequence[NodeWithScore] | None = None,
                          **response_kwargs: Any) -> Response:
        return await asyncio.to_thread(self.synthesize, query, nodes, additional_source_nodes)
