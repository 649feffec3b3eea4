"""The torch backend of the scorer: one forward pass over a batch of (question, window) pairs,
and the same pass through the passage cache (a cached window reads only its question).

Both return the question's summed log-likelihood per pair and, when asked, the mean final
hidden state over the question's tokens (what the head reads); the scorer normalises and adds
the head. Gradients flow when the caller has them on (training); serving runs it under
inference mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..models.adapters import use_adapter
from .passage_cache import (
    PassageCache,
    PrefixState,
    question_outputs,
    states_identity,
    take_prefix_states,
)
from .precision import autocast
from .projector import Projector
from .tokens import ScorerBatch, ScorerTokens


@dataclass
class TorchForward:
    """What a pass runs under: the tokens it builds, the adapter, the precision and the
    projector (soft tokens only)."""

    tokens: ScorerTokens
    adapter: str | None
    dtype: torch.dtype
    projector: Projector | None = None

    def outputs(self, model: nn.Module, questions: Sequence[list[int]],
                passages: Sequence[list[int]], query_coarse: Tensor | None,
                passage_coarse: Tensor | None, features: bool,
                cache: PassageCache | None = None, source: nn.Module | None = None,
                ) -> tuple[Tensor, Tensor | None]:
        """``(summed question log-likelihood [B], features [B, H] or None)`` of each pair on
        ``model``; through ``cache`` when given (``source``: the model whose weights ``model``
        carries, for the cache's keys)."""
        if cache is None:
            return self.run(model, questions, passages, query_coarse, passage_coarse,
                            features)[:2]
        return self._cached(model, source or model, cache, questions, passages, features)

    def run(self, model: nn.Module, questions: Sequence[list[int]],
            passages: Sequence[list[int]], query_coarse: Tensor | None,
            passage_coarse: Tensor | None, features: bool, keep_states: bool = False,
            ) -> tuple[Tensor, Tensor | None, list[PrefixState] | None]:
        """One pass over whole sequences, and with ``keep_states`` each row's prefix states
        (everything before its question) for the passage cache."""
        batch = self.tokens.batch(list(zip(questions, passages)))
        device = model.get_input_embeddings().weight.device
        width = batch.input_ids.shape[1]
        first_kept = width - batch.targets.shape[1] - 1
        kwargs: dict[str, Any] = {"attention_mask": batch.attention_mask.to(device),
                                  "position_ids": batch.position_ids.to(device),
                                  # as indices, not a count: a sliced (strided) hidden state
                                  # makes the LM head copy its weight once per row (~10x slower)
                                  "logits_to_keep": torch.arange(first_kept, width,
                                                                 device=device),
                                  "output_hidden_states": features, "use_cache": keep_states}
        with use_adapter(model, self.adapter), autocast(self.dtype, model):
            if batch.soft_starts is None:
                kwargs["input_ids"] = batch.input_ids.to(device)
            else:
                kwargs["inputs_embeds"] = self._with_soft_tokens(model, batch, query_coarse,
                                                                 passage_coarse)
            out = model(**kwargs)
        states = None
        if keep_states:  # row i's prefix spans [width - row length, width - question length)
            spans = [(width - int(r), width - int(q)) for r, q in
                     zip(batch.attention_mask.sum(-1), batch.target_mask.sum(-1))]
            states = take_prefix_states(out.past_key_values, out.logits, spans, first_kept)
        logits = out.logits[:, :-1].float()
        targets = batch.targets.to(device)
        mask = batch.target_mask.to(device)
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]
        total = (logprobs * mask).sum(-1)
        if not features:
            return total, None, states
        hidden = out.hidden_states[-1][:, -targets.shape[1]:].float()  # the question positions
        weights = mask[..., None].float()
        return total, (hidden * weights).sum(1) / weights.sum(1), states

    def _cached(self, model: nn.Module, source: nn.Module, cache: PassageCache,
                questions: Sequence[list[int]], passages: Sequence[list[int]],
                features: bool) -> tuple[Tensor, Tensor | None]:
        """Pairs whose prefix is cached read only their question after its states; the others
        are read whole, as without a cache, and their prefix states kept."""
        identity = states_identity(model, source, self.adapter, self.dtype)
        keys = [cache.key(identity, self.tokens.row([], p)) for p in passages]  # no soft tokens
        states = [cache.get(k) for k in keys]
        device = model.get_input_embeddings().weight.device
        total = torch.zeros(len(keys), device=device)
        vectors = torch.zeros(len(keys), model.get_input_embeddings().embedding_dim,
                              device=device) if features else None
        read = [i for i, state in enumerate(states) if state is None]
        if read:
            found, found_vectors, new = self.run(
                model, [questions[i] for i in read], [passages[i] for i in read], None, None,
                features, keep_states=True)
            total[read] = found
            if features:
                vectors[read] = found_vectors
            for i, state in zip(read, new):
                cache.put(keys[i], state)
        hit = [i for i, state in enumerate(states) if state is not None]
        if hit:
            with use_adapter(model, self.adapter), autocast(self.dtype, model):
                found, found_vectors = question_outputs(model, [states[i] for i in hit],
                                                        [questions[i] for i in hit],
                                                        self.tokens.pad_id, features)
            total[hit] = found
            if features:
                vectors[hit] = found_vectors
        return total, vectors

    def _with_soft_tokens(self, model: nn.Module, batch: ScorerBatch,
                          query_coarse: Tensor | None, passage_coarse: Tensor | None) -> Tensor:
        if query_coarse is None or passage_coarse is None or self.projector is None:
            raise ValueError("soft tokens need a projector and the coarse vectors of queries "
                             "and passages")
        embeds = model.get_input_embeddings()(batch.input_ids.to(
            model.get_input_embeddings().weight.device))
        device = embeds.device
        m = self.tokens.settings.num_soft_tokens
        rows = torch.arange(embeds.shape[0], device=device)[:, None]
        steps = torch.arange(m, device=device)[None]
        for column, coarse in ((0, passage_coarse), (1, query_coarse)):
            soft = self.projector(coarse.to(device, torch.float32)).to(embeds.dtype)
            embeds = embeds.index_put((rows.expand(-1, m),
                                       batch.soft_starts[:, column:column + 1].to(device) + steps),
                                      soft)
        return embeds
