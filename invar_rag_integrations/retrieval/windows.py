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
read nodes through :func:`windows_to_read`; stage-1 encoders cut their windows with
:func:`text_windows`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

AGGREGATIONS = ("first", "max", "mean", "softmax")
PRESELECTIONS = ("none", "bm25")
MIN_WINDOW = 16
EMPTY_SCORE = float("-inf")  # r of a node without text: below every node that has some


def check_window_settings(window: int, stride: int, max_windows: int, aggregation: str,
                          temperature: float, preselect: str) -> None:
    """Fail on window settings that cannot work, naming the values.

    Raises:
        ValueError: ``window < 16``, ``stride`` outside ``[1, window]``, ``max_windows < 1``,
            an unknown aggregation or pre-selection, or a temperature that is not positive.
    """
    if window < MIN_WINDOW:
        raise ValueError(f"the scorer's window (max_passage_tokens) must be at least "
                         f"{MIN_WINDOW} tokens, got {window}")
    if not 1 <= stride <= window:
        raise ValueError(f"window_stride must be between 1 and the window (max_passage_tokens "
                         f"= {window}), got {stride}: a larger stride skips tokens")
    if max_windows < 1:
        raise ValueError(f"max_windows must be at least 1, got {max_windows}")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"window_aggregation must be one of {AGGREGATIONS}, got "
                         f"{aggregation!r}")
    if preselect not in PRESELECTIONS:
        raise ValueError(f"preselect must be one of {PRESELECTIONS}, got {preselect!r}")
    if not temperature > 0:
        raise ValueError(f"window_temperature must be positive, got {temperature}")


def window_spans(length: int, size: int, stride: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of the windows over ``length`` tokens: every ``stride`` tokens, the
    last one ending at the end (one window when ``length <= size``)."""
    if length <= size:
        return [(0, length)]
    starts = list(range(0, length - size, stride)) + [length - size]
    return [(start, start + size) for start in starts]


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


def text_windows(tokenizer: Any, title: str, text: str, size: int,
                 stride: int) -> list[str]:
    """A node's text cut into windows of at most ``size`` tokens of ``tokenizer`` (a stage-1
    encoder's), every ``stride`` tokens, each under the title as ``Passage.full_text`` puts it;
    a node that fits is one window, its ``full_text`` unchanged."""
    full = f"{title}\n{text}" if title else text
    head = len(tokenizer(full[: len(full) - len(text)], add_special_tokens=False)["input_ids"])
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                        verbose=False)  # longer than the encoder reads: that is the point
    offsets = encoded["offset_mapping"]
    room = max(size - head, size // 2)
    if len(offsets) <= room:
        return [full]
    prefix = full[: len(full) - len(text)]
    return [prefix + text[offsets[start][0] : offsets[stop - 1][1]]
            for start, stop in window_spans(len(offsets), room, min(stride, room))]
