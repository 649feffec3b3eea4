"""Hot passages read once: an LRU cache of the key/value states of a scorer sequence's prefix.

In a causal LM the states of ``[BOS] prompt-head window prompt-tail`` do not depend on the
question that follows, so a window read again (a popular document, a repeated or rewritten
query) costs only its question's tokens: the question is run on the cached states. Entries are
keyed by the prefix's token ids and the identity of the model that computed them (the model
object, its adapter, precision and a counter of in-place weight updates), so states from another
model, adapter or an older version of the weights are never used. The cache holds at most
``max_bytes``; the least recently used passages are dropped first.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class PrefixState:
    """One prefix's states: per layer keys and values ``[heads, length, head_dim]``, and the
    logits ``[V]`` at its last position (they predict the question's first token)."""

    layers: tuple[tuple[Tensor, Tensor], ...]
    last_logits: Tensor

    @property
    def length(self) -> int:
        return self.layers[0][0].shape[1]

    @property
    def nbytes(self) -> int:
        tensors = [t for layer in self.layers for t in layer] + [self.last_logits]
        return sum(t.numel() * t.element_size() for t in tensors)


def weights_version(model: nn.Module) -> int:
    """A sum of the parameters' in-place update counters: an optimizer step or a loaded state
    changes it."""
    return sum(p._version for p in model.parameters())


def states_identity(model: nn.Module, source: nn.Module, adapter: str | None,
                    dtype: torch.dtype) -> str:
    """Which weights compute the states: the model object that runs (``source`` itself, or a
    copy made from it), the version of ``source``'s weights, the adapter and the precision."""
    return f"{id(model)}:{id(source)}:{weights_version(source)}:{adapter}:{dtype}"


class PassageCache:
    """LRU of :class:`PrefixState` by prefix token ids and model identity, at most
    ``max_mb`` megabytes (hits, misses and evictions are counted in :attr:`counts`).

    Raises:
        ValueError: ``max_mb`` is not positive.
    """

    def __init__(self, max_mb: float):
        if not max_mb > 0:
            raise ValueError(f"the passage cache needs a positive size in MB, got {max_mb!r}")
        self.max_bytes = int(max_mb * 2**20)
        self._states: OrderedDict[str, PrefixState] = OrderedDict()
        self.bytes = 0
        self.counts = {"hits": 0, "misses": 0, "evictions": 0}

    def __len__(self) -> int:
        return len(self._states)

    @staticmethod
    def key(identity: str, prefix: Sequence[int]) -> str:
        return hashlib.sha256(f"{identity}|{','.join(map(str, prefix))}".encode()).hexdigest()

    def get(self, key: str) -> PrefixState | None:
        found = self._states.get(key)
        self.counts["hits" if found is not None else "misses"] += 1
        if found is not None:
            self._states.move_to_end(key)
        return found

    def put(self, key: str, state: PrefixState) -> None:
        """Keep ``state`` (a state larger than the whole cache is not kept)."""
        if key in self._states or state.nbytes > self.max_bytes:
            return
        self._states[key] = state
        self.bytes += state.nbytes
        while self.bytes > self.max_bytes:
            _, dropped = self._states.popitem(last=False)
            self.bytes -= dropped.nbytes
            self.counts["evictions"] += 1


def take_prefix_states(past: Any, logits: Tensor, spans: Sequence[tuple[int, int]],
                       first_logit: int) -> list[PrefixState]:
    """Each row's prefix states from a pass over whole sequences: its keys and values at
    positions ``[start, stop)`` of ``spans[i]``, and the logits at ``stop - 1`` (``logits``
    holds positions from ``first_logit`` on)."""
    layers = [(layer.keys, layer.values) for layer in past.layers]
    return [PrefixState(tuple((k[i, :, start:stop].clone(), v[i, :, start:stop].clone())
                              for k, v in layers),
                        logits[i, stop - 1 - first_logit].float().clone())
            for i, (start, stop) in enumerate(spans)]


def question_outputs(model: nn.Module, states: Sequence[PrefixState],
                     questions: Sequence[list[int]], pad_id: int,
                     features: bool) -> tuple[Tensor, Tensor | None]:
    """``(summed log-likelihood [B], features [B, H] or None)`` of each question read after
    its prefix's cached states: the states are left-padded into one cache, each question
    left-padded after them, so every question ends at the last position."""
    from transformers import DynamicCache

    device = model.get_input_embeddings().weight.device
    past, longest = max(s.length for s in states), max(len(q) for q in questions)
    count = len(states)
    attention = torch.zeros((count, past + longest), dtype=torch.long)
    ids = torch.full((count, longest), pad_id, dtype=torch.long)
    positions = torch.zeros((count, longest), dtype=torch.long)
    mask = torch.zeros((count, longest), dtype=torch.bool)
    for i, (state, question) in enumerate(zip(states, questions)):
        start = longest - len(question)
        attention[i, past - state.length : past] = 1
        attention[i, past + start:] = 1
        ids[i, start:] = torch.tensor(question)
        positions[i, start:] = torch.arange(len(question)) + state.length
        mask[i, start:] = True
    cache_layers = []
    for layer in range(len(states[0].layers)):
        heads, _, head_dim = states[0].layers[layer][0].shape
        padded = [states[0].layers[layer][0].new_zeros((count, heads, past, head_dim))
                  for _ in range(2)]
        for i, state in enumerate(states):
            for j in range(2):
                padded[j][i, :, past - state.length:] = state.layers[layer][j]
        cache_layers.append((padded[0].to(device), padded[1].to(device)))
    out = model(input_ids=ids.to(device), attention_mask=attention.to(device),
                position_ids=positions.to(device),
                past_key_values=DynamicCache(cache_layers, config=model.config), use_cache=True,
                output_hidden_states=features)
    first = torch.stack([s.last_logits for s in states]).to(device)
    targets, mask = ids.to(device), mask.to(device)
    # row i's question starts at longest - len(q): its first token is predicted by the prefix's
    # last logits, the others by the continuation's previous position
    shifted = torch.zeros((count, longest, first.shape[-1]), device=device)
    for i, question in enumerate(questions):
        start = longest - len(question)
        shifted[i, start] = first[i]
        shifted[i, start + 1:] = out.logits[i, start:-1].float()
    logprobs = torch.log_softmax(shifted, dim=-1).gather(-1, targets[..., None])[..., 0]
    total = (logprobs * mask).sum(-1)
    if not features:
        return total, None
    hidden = out.hidden_states[-1].float()
    weights = mask[..., None].float()
    return total, (hidden * weights).sum(1) / weights.sum(1)
