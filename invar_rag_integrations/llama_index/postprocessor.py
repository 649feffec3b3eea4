"""``InvarReranker``: re-score any retriever's nodes with the Invar score."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle

from ..retrieval.base import check_k, check_text
from ..retrieval.invar_retriever import InvarRetriever as CoreInvarRetriever
from ..retrieval.invar_retriever import check_invar_retriever
from ._convert import node_text

KEPT_SCORE = "retrieval_score"


class InvarReranker(BaseNodePostprocessor):
    """Keep the ``top_n`` nodes by Invar score; each node's previous score is kept in
    ``metadata['retrieval_score']`` (excluded from the text that is embedded or prompted).

    Args:
        retriever: The core Invar retriever (no index needed).
        top_n: Nodes to keep.
    """

    top_n: int = Field(description="Number of nodes to return sorted by score.")
    _core: CoreInvarRetriever = PrivateAttr()

    def __init__(self, retriever: CoreInvarRetriever, top_n: int = 2):
        super().__init__(top_n=check_k(top_n, "top_n"))
        self._core = check_invar_retriever(retriever)

    @classmethod
    def from_pretrained(cls, system_dir: str | os.PathLike[str], **kwargs: Any) -> InvarReranker:
        return cls(CoreInvarRetriever.from_pretrained(system_dir, show_progress=False), **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "InvarReranker"

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("InvarReranker needs the query (query_bundle is missing)")
        query = check_text(query_bundle.query_str)
        if not nodes:
            return []
        passages = self._core.embed_passages([node_text(n.node) for n in nodes])
        scores = passages @ self._core.query_vectors([query])[0]
        for node, score in zip(nodes, scores):
            node.node.metadata[KEPT_SCORE] = node.score
            for excluded in (node.node.excluded_embed_metadata_keys,
                             node.node.excluded_llm_metadata_keys):
                if KEPT_SCORE not in excluded:
                    excluded.append(KEPT_SCORE)
            node.score = float(score)
        order = np.argsort(-scores, kind="stable")[: self.top_n]
        return [nodes[i] for i in order]
