"""The retriever-stage training model (in-batch negatives, loss-term logging, NaN guard)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import Tensor, nn
from transformers import TrainerCallback

from invar_rag_integrations.retrieval.invar import InvarEncoder

from .losses import InvarRetrievalLoss


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


class RetrieverTrainingModel(nn.Module):
    """Scores every query variant against its candidates and returns the Invar-RAG loss.

    Args:
        encoder: The Invar encoder (only LoRA and the projector are trainable).
        loss: The weighted loss.
        in_batch_negatives: ``L_nce`` also ranks against the other queries' candidates.
        fusion_beta: Train on ``s + fusion_beta * cos(c(q), c(d))`` so the LM learns a
            correction of the coarse ranking (0 = the LM score alone, as in the paper).
    """

    def __init__(self, encoder: InvarEncoder, loss: InvarRetrievalLoss,
                 in_batch_negatives: bool = True, fusion_beta: float = 0.0):
        super().__init__()
        self.encoder, self.loss, self.in_batch_negatives = encoder, loss, in_batch_negatives
        self.fusion_beta = fusion_beta
        self.term_sums: dict[str, float] = defaultdict(float)
        self.term_count = 0

    def forward(self, variants: list[list[str]], variant_coarse: Tensor,
                candidate_ids: list[list[str]], candidate_texts: list[list[str]],
                candidate_coarse: Tensor, mask: Tensor, positives: Tensor,
                lm_logprobs: Tensor) -> dict[str, Tensor]:
        batch, count = len(variants), len(variants[0])
        tau = self.encoder.settings.tau
        # queries: encode each distinct variant text once (resizings repeat the original)
        first_seen: dict[str, tuple[int, int]] = {}
        for b, row in enumerate(variants):
            for v, text in enumerate(row):
                first_seen.setdefault(text, (b, v))
        coarse_q = torch.stack([variant_coarse[b, v] for b, v in first_seen.values()])
        u_unique = self.encoder.embed("query", list(first_seen), coarse_q)
        position = {text: i for i, text in enumerate(first_seen)}
        u = u_unique[torch.tensor([position[t] for row in variants for t in row])]
        u = u.view(batch, count, -1)
        # passages: encode the real candidates only
        rows, cols = mask.nonzero(as_tuple=True)
        texts = [candidate_texts[r][c] for r, c in zip(rows.tolist(), cols.tolist())]
        v_real = self.encoder.embed("passage", texts, candidate_coarse[rows, cols])
        v = v_real.new_zeros(batch, mask.shape[1], v_real.shape[-1])
        v = v.index_put((rows, cols), v_real)
        scores = torch.einsum("bvh,bch->bvc", u, v) / tau
        if self.fusion_beta:
            scores = scores + self.fusion_beta * torch.einsum(
                "bvd,bcd->bvc", variant_coarse, candidate_coarse)
        nce_scores = nce_mask = nce_positives = None
        if self.in_batch_negatives and batch > 1:
            nce_scores = u[:, 0] @ v_real.T / tau
            if self.fusion_beta:
                nce_scores = nce_scores + self.fusion_beta * (
                    variant_coarse[:, 0] @ candidate_coarse[rows, cols].T)
            nce_mask = torch.ones_like(nce_scores, dtype=torch.bool)
            real_ids = [candidate_ids[r][c] for r, c in zip(rows.tolist(), cols.tolist())]
            wanted = [{pid for pid, p in zip(candidate_ids[b], positives[b].tolist()) if p}
                      for b in range(batch)]
            nce_positives = torch.tensor([[pid in wanted[b] for pid in real_ids]
                                          for b in range(batch)])
        out = self.loss(scores[:, 0], mask, positives=positives, lm_logprobs=lm_logprobs[:, 0],
                        variant_scores=scores, variant_lm_logprobs=lm_logprobs,
                        nce_scores=nce_scores, nce_mask=nce_mask, nce_positives=nce_positives)
        if not torch.isfinite(out["loss"]):
            terms = {k: float(t.detach()) for k, t in out.items()}
            raise NonFiniteLossError(f"non-finite training loss {terms}")
        if self.training:
            for name, term in out.items():
                self.term_sums[name] += float(term.detach())
            self.term_count += 1
        return out

    def pop_term_means(self) -> dict[str, float]:
        """Mean of each loss term since the last call (for logging)."""
        means = {f"loss_{k}": s / self.term_count for k, s in self.term_sums.items()
                 if k != "loss"} if self.term_count else {}
        self.term_sums.clear()
        self.term_count = 0
        return means


class LossTermsCallback(TrainerCallback):
    """Adds the mean of each loss term (nce, align, invar) to the Trainer's logs."""

    def __init__(self, model: RetrieverTrainingModel):
        self.model = model

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None,
               **kwargs: Any) -> None:
        if logs is not None and "loss" in logs:
            logs.update({k: round(v, 4) for k, v in self.model.pop_term_means().items()})
