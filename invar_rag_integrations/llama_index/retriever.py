"""``InvarRetriever``: LlamaIndex retriever over the core two-stage Invar retriever."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import BaseNode, NodeWithScore, QueryBundle
from llama_index.core.storage.docstore.types import BaseDocumentStore

from ..invar.two_stage import TwoStageRetriever
from ..retrieval.base import Retriever, check_instance, check_k
from ._convert import node_passages


class InvarRetriever(BaseRetriever):
    """Top-``similarity_top_k`` nodes by the two-stage Invar retriever, best first; with the
    Invar retriever, each node's score is the probability that it holds an answer to the query
    (in [0, 1], calibrated), so one ``SimilarityPostprocessor`` cut-off works across queries.

    Args:
        retriever: A core retriever (normally ``retrieval.InvarRetriever``, whose model is
            shared and whose own index is left alone; another kind is indexed in place).
        nodes: The nodes to search, or
        docstore: an existing index's docstore whose nodes are searched.
        similarity_top_k: Nodes returned per query.
    """

    def __init__(self, retriever: Retriever, nodes: Sequence[BaseNode] | None = None,
                 docstore: BaseDocumentStore | None = None, similarity_top_k: int = 2,
                 callback_manager: CallbackManager | None = None, verbose: bool = False):
        check_instance(retriever, Retriever, "retriever",
                       "InvarRetriever.from_pretrained(system_dir) or InvarRAG(...).retriever")
        if (nodes is None) == (docstore is None):
            raise ValueError("give exactly one of nodes or docstore")
        nodes = list(nodes if nodes is not None else docstore.docs.values())
        if not nodes:
            raise ValueError("no nodes to retrieve from")
        self.similarity_top_k = retriever.check_depth(similarity_top_k, "similarity_top_k") \
            if isinstance(retriever, TwoStageRetriever) \
            else check_k(similarity_top_k, "similarity_top_k")
        self._core = retriever.unindexed() if isinstance(retriever, TwoStageRetriever) \
            else retriever
        self._core.index(node_passages(nodes))
        self._nodes = {n.node_id: n for n in nodes}
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    @classmethod
    def from_pretrained(cls, system_dir: str | os.PathLike[str], **kwargs: Any) -> InvarRetriever:
        """Load the trained retriever of a system directory, then index ``nodes``/``docstore``."""
        return cls(TwoStageRetriever.from_pretrained(system_dir, index=None,
                                                      show_progress=False), **kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        [result] = self._core.search([query_bundle.query_str], self.similarity_top_k)
        return [NodeWithScore(node=self._nodes[i], score=s)
                for i, s in zip(result.ids, result.scores)]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)
