"""``InvarReranker``: the Invar scorer (stage 2) over any retriever's nodes, like
``SentenceTransformerRerank``."""

from __future__ import annotations

import os
from typing import Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle

from ..retrieval.base import check_k, check_text
from ..retrieval.invar_retriever import InvarReranker as CoreReranker
from ..retrieval.invar_retriever import InvarRetriever as CoreInvarRetriever
from ..retrieval.invar_retriever import stage2_of
from ._convert import node_text

KEPT_SCORE = "retrieval_score"


class InvarReranker(BaseNodePostprocessor):
    """Keep the ``top_n`` nodes by the fused Invar score (the LM reads each node's text with
    the question); each node's previous score is kept in ``metadata['retrieval_score']``
    (excluded from the text that is embedded or prompted).

    Args:
        retriever: The core Invar retriever (its stage 2 is used; no index needed) or a core
            ``InvarReranker``.
        top_n: Nodes to keep.
    """

    top_n: int = Field(description="Number of nodes to return sorted by score.")
    _core: CoreReranker = PrivateAttr()

    def __init__(self, retriever: CoreInvarRetriever | CoreReranker, top_n: int = 2):
        super().__init__(top_n=check_k(top_n, "top_n"))
        self._core = stage2_of(retriever)

    @classmethod
    def from_pretrained(cls, system_dir: str | os.PathLike[str], **kwargs: Any) -> InvarReranker:
        return cls(CoreInvarRetriever.from_pretrained(system_dir, index=None,
                                                      show_progress=False), **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "InvarReranker"

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("InvarReranker needs the query (query_bundle is missing)")
        query = check_text(query_bundle.query_str)
        ranked = self._core.rerank(query, [node_text(n.node) for n in nodes], self.top_n)
        kept = []
        for index, score in ranked:
            node = nodes[index]
            node.node.metadata[KEPT_SCORE] = node.score
            for excluded in (node.node.excluded_embed_metadata_keys,
                             node.node.excluded_llm_metadata_keys):
                if KEPT_SCORE not in excluded:
                    excluded.append(KEPT_SCORE)
            node.score = score
            kept.append(node)
        return kept
