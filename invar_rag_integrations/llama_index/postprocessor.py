"""``InvarReranker``: the Invar scorer (stage 2) over any retriever's nodes, like
``SentenceTransformerRerank``."""

from __future__ import annotations

import os
from typing import Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle

from ..invar.calibration import check_threshold
from ..invar.checks import stage2_of
from ..invar.early_stop import STOP_MARGIN, check_policy
from ..invar.reranker import Stage2Reranker
from ..invar.two_stage import TwoStageRetriever
from ..retrieval.base import check_k, check_text
from ._convert import node_text

KEPT_SCORE = "retrieval_score"


class InvarReranker(BaseNodePostprocessor):
    """Keep the ``top_n`` nodes by the Invar retriever's ranking (the LM reads each node's text
    with the question), each scored with the probability that it holds an answer to the query
    (in [0, 1], calibrated); each node's previous score is kept in
    ``metadata['retrieval_score']`` (excluded from the text that is embedded or prompted).

    Args:
        retriever: The core Invar retriever (its stage 2 is used; no index needed) or a core
            ``InvarReranker``.
        top_n: Nodes to keep.
        read_first, stop_margin: Early stop: read the first ``read_first`` nodes (in the
            retriever's order), the rest only while the leader is not clear by
            ``stop_margin`` (``Stage2Reranker.rerank``); an unread node's probability comes
            from its cosine and length. ``None``: read every node.
        score_threshold: Leave out nodes whose probability is below it (``None``: keep the
            ``top_n``), as a ``SimilarityPostprocessor`` after this one would.
    """

    top_n: int = Field(description="Number of nodes to return sorted by score.")
    read_first: int | None = Field(default=None, description="Early stop: nodes read first.")
    stop_margin: float = Field(default=STOP_MARGIN, description="Early stop: the clear lead.")
    score_threshold: float | None = Field(default=None,
                                          description="The lowest relevance probability kept.")
    _core: Stage2Reranker = PrivateAttr()

    def __init__(self, retriever: TwoStageRetriever | Stage2Reranker, top_n: int = 2,
                 read_first: int | None = None, stop_margin: float = STOP_MARGIN,
                 score_threshold: float | None = None):
        if read_first is not None:
            check_policy(read_first, stop_margin)
        super().__init__(top_n=check_k(top_n, "top_n"), read_first=read_first,
                         stop_margin=stop_margin, score_threshold=check_threshold(score_threshold))
        self._core = stage2_of(retriever)

    @classmethod
    def from_pretrained(cls, system_dir: str | os.PathLike[str], **kwargs: Any) -> InvarReranker:
        return cls(TwoStageRetriever.from_pretrained(system_dir, index=None,
                                                      show_progress=False), **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "InvarReranker"

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("InvarReranker needs the query (query_bundle is missing)")
        query = check_text(query_bundle.query_str)
        ranked = self._core.rerank(query, [node_text(n.node) for n in nodes], self.top_n,
                                   self.read_first, self.stop_margin)
        kept = []
        for index, score in ranked:
            if self.score_threshold is not None and score < self.score_threshold:
                continue
            node = nodes[index]
            node.node.metadata[KEPT_SCORE] = node.score
            for excluded in (node.node.excluded_embed_metadata_keys,
                             node.node.excluded_llm_metadata_keys):
                if KEPT_SCORE not in excluded:
                    excluded.append(KEPT_SCORE)
            node.score = score
            kept.append(node)
        return kept
