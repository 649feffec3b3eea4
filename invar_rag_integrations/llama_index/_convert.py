"""Conversions between LlamaIndex nodes and the core's passages."""

from __future__ import annotations

from collections.abc import Sequence

from llama_index.core.schema import BaseNode, MetadataMode

from ..data import Passage


def node_text(node: BaseNode) -> str:
    """The text LlamaIndex gives an embedding model for ``node`` (content plus the metadata
    not excluded from embedding), so the wrappers and ``InvarEmbedding`` encode the same text."""
    return node.get_content(metadata_mode=MetadataMode.EMBED)


def node_passages(nodes: Sequence[BaseNode]) -> list[Passage]:
    """Nodes as core passages (id = node id, text = :func:`node_text`)."""
    return [Passage(n.node_id, node_text(n)) for n in nodes]
