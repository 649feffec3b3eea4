"""How the scorer reads a node longer than its window: token windows, the windows it reads,
and their aggregation into one ``r(q, d)``.

A node (a passage, a LlamaIndex node, a LangChain document) is tokenised once with the
scorer's own tokenizer into a *prefix* (its title, repeated in every window) and a *body*. A
body longer than the window is cut into windows of ``max_passage_tokens`` tokens (prefix
included) that start every ``window_stride`` tokens, the last one ending at the body's end, so
every token is read. When a node has more windows than ``max_windows``, a cheap signal picks
the ones the LM reads (``preselect = "bm25"``: BM25 of the question against the node's
windows), so a long node costs at most ``max_windows`` short passages. The LM scores each
window read, and :func:`aggregate` turns the windows' scores into the node's ``r``: its first
window (``first``: what a scorer that truncates reads), its best (``max``, MaxP), their
``mean``, or ``softmax``, a smooth maximum (Dai and Callan 2019 compare FirstP, MaxP, SumP).
The default reads one window per node, the BM25-best: on the tuning slice it ranked better
than all windows with MaxP, at the cost of the first window alone. Serving and training both
read nodes through :func:`windows_to_read` (stage-1 encoders cut theirs with
``retrieval.text_windows``).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..retrieval.text_windows import window_spans
from .early_stop import UNSCORED
from .settings import AGGREGATIONS


@dataclass(frozen=True)
class NodeTokens:
    """A node as the scorer's tokenizer reads it: ``prefix`` (the title, in every window) and
    ``body`` (the text)."""

    prefix: list[int]
    body: list[int]

    @property
    def empty(self) -> bool:
        return not self.body

    def spans(self, size: int, stride: int) -> tuple[list[int], list[tuple[int, int]]]:
        """``(prefix as read, body spans)`` of the windows of ``size`` tokens (a prefix longer
        than a quarter of the window is cut to a quarter)."""
        prefix = self.prefix[: size // 4]
        room = size - len(prefix)
        return prefix, window_spans(len(self.body), room, min(stride, room))

    def windows(self, size: int, stride: int) -> list[list[int]]:
        """Every window's token ids (prefix + a slice of the body)."""
        prefix, spans = self.spans(size, stride)
        return [prefix + self.body[start:stop] for start, stop in spans]


@functools.lru_cache(maxsize=1)
def _stemmer() -> object:
    import Stemmer

    return Stemmer.Stemmer("english")


def bm25_best_windows(query: str, texts: Sequence[Sequence[str]], count: int) -> list[list[int]]:
    """For each node (its windows' ``texts``), the indices of its ``count`` windows with the
    highest BM25 score for ``query``, in reading order; IDF comes from all windows given. A
    node with ``count`` windows or fewer keeps them all; ties keep the earlier window."""
    import bm25s

    flat = [text for node in texts for text in node]
    chosen = [list(range(len(node))) for node in texts]
    if not any(len(node) > count for node in texts):
        return chosen
    stemmer = _stemmer()
    corpus = bm25s.tokenize(flat, stopwords="en", stemmer=stemmer, show_progress=False)
    [terms] = bm25s.tokenize([query], stopwords="en", stemmer=stemmer, return_ids=False,
                             show_progress=False)
    if corpus.vocab and terms:
        index = bm25s.BM25()
        index.index(corpus, show_progress=False)
        scores = index.get_scores(list(terms))
    else:  # nothing to match on: the first windows
        scores = np.zeros(len(flat))
    start = 0
    for i, node in enumerate(texts):
        if len(node) > count:
            mine = scores[start : start + len(node)]
            best = np.argsort(-mine, kind="stable")[:count]
            chosen[i] = sorted(int(j) for j in best)
        start += len(node)
    return chosen


def windows_to_read(query: str, nodes: Sequence[NodeTokens], size: int, stride: int,
                    max_windows: int, preselect: str,
                    decode: Callable[[list[int]], str]) -> tuple[list[list[list[int]]], int]:
    """The windows the LM reads for each of a query's candidate nodes, and how many nodes
    had more windows than ``max_windows`` (they are read in part: their best windows by BM25
    with ``preselect = "bm25"``, else their first ones). An empty node reads none."""
    spans = [node.spans(size, stride) if not node.empty else ([], []) for node in nodes]
    long = [i for i, (_, s) in enumerate(spans) if len(s) > max_windows]
    picked = {i: list(range(max_windows)) for i in long}
    if long and preselect == "bm25":
        texts = [[decode(nodes[i].body[a:b]) for a, b in spans[i][1]] for i in long]
        picked = dict(zip(long, bm25_best_windows(query, texts, max_windows)))
    read = []
    for i, (node, (prefix, node_spans)) in enumerate(zip(nodes, spans)):
        keep = picked.get(i, range(len(node_spans)))
        read.append([prefix + node.body[node_spans[j][0] : node_spans[j][1]] for j in keep])
    return read, len(long)


def aggregation_weights(scores: Tensor, method: str, temperature: float) -> Tensor:
    """Weights over a node's windows (summing to 1): how much each window counts in the
    node's score (its gradient), and how the windows' features are averaged."""
    if method == "first":
        weights = torch.zeros_like(scores)
        weights[0] = 1
    elif method == "max":
        weights = torch.zeros_like(scores)
        weights[int(torch.argmax(scores.detach()))] = 1
    elif method == "mean":
        weights = torch.full_like(scores, 1 / len(scores))
    elif method == "softmax":
        weights = torch.softmax(scores / temperature, dim=0)
    else:
        raise ValueError(f"window_aggregation must be one of {AGGREGATIONS}, got {method!r}")
    return weights


def aggregate(scores: Tensor, method: str, temperature: float) -> Tensor:
    """A node's ``r`` from its windows' scores ``[W]``: the first, the best, the mean, or
    ``softmax``: ``T log mean exp(r / T)``, a smooth maximum between the mean (large ``T``)
    and the best (small ``T``). Differentiable (training backpropagates through it), with
    non-negative weights: a better window never lowers its node's score."""
    if len(scores) == 1:
        return scores[0]
    if method == "softmax":
        count = torch.tensor(float(len(scores)), dtype=scores.dtype)
        return temperature * (torch.logsumexp(scores / temperature, 0) - torch.log(count))
    return (aggregation_weights(scores, method, temperature) * scores).sum()


def by_node(values: Tensor, vectors: Tensor | None, owners: list[tuple[int, int]],
            counts: list[int], method: str, temperature: float,
            head: torch.nn.Module | None) -> tuple[list[Tensor], list[Tensor]]:
    """Window scores ``[N]`` (and features ``[N, H]``) regrouped into each query's ``counts``
    nodes (``owners``: the ``(query, node)`` of each window; a node's windows are
    consecutive): a node's windows aggregated by ``method``; with features, its likelihood and
    features weighted as its served score (``head`` included) weighs its windows, so
    likelihood + head(features) is that score. A node without windows scores
    :data:`UNSCORED`."""
    width = vectors.shape[1] if vectors is not None else 0
    per_node: dict[tuple[int, int], tuple[Tensor, Tensor | None]] = {}
    start = 0
    for owner, group in itertools.groupby(owners):
        stop = start + len(list(group))
        mine = values[start:stop]
        if vectors is None:
            per_node[owner] = (aggregate(mine, method, temperature), None)
        else:
            served = mine if head is None else \
                mine + head(vectors[start:stop].to(head.weight.dtype))[:, 0].float()
            weights = aggregation_weights(served, method, temperature)
            per_node[owner] = (weights @ mine, weights @ vectors[start:stop])
        start = stop
    unscored, no_features = values.new_tensor(UNSCORED), values.new_zeros(width)
    scores, features = [], []
    for qi, count in enumerate(counts):
        found = [per_node.get((qi, ci), (unscored, no_features)) for ci in range(count)]
        scores.append(torch.stack([s for s, _ in found]) if found else values.new_zeros(0))
        if vectors is not None:
            features.append(torch.stack([f for _, f in found]) if found
                            else values.new_zeros((0, width)))
    return scores, features
