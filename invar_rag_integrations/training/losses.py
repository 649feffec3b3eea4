"""Retrieval-stage losses of Invar-RAG as ``nn.Module``s (DESIGN.md §2).

Shapes: ``B`` queries, ``C`` candidates per query (padded; ``mask`` marks the real ones) and
``V`` variants per query. Retriever scores are the fused ``s(q, d)`` of
:func:`invar_rag_integrations.retrieval.fused_score` and ``P_R(.|q) = softmax_C(s)``; LM scores
are ``log P_LM(answer | passage, query)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

_NEG = -1e9  # finite "minus infinity": keeps 0 * log(0) terms out of NaN territory


def masked_log_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """``log softmax`` over the candidates where ``mask`` is true (others get a huge negative)."""
    return torch.log_softmax(scores.masked_fill(~mask, _NEG), dim=-1)


def lsr_distribution(lm_logprobs: Tensor, mask: Tensor, beta: float) -> Tensor:
    """``Q_LSR(d|q,y) = softmax_C(log P_LM(y|d,q) / beta)`` over the real candidates."""
    return masked_log_softmax(lm_logprobs / beta, mask).exp() * mask


def kl_divergence(target: Tensor, log_predicted: Tensor, mask: Tensor) -> Tensor:
    """Per-row ``KL(target || predicted)`` over real candidates; zero-probability terms add 0."""
    keep = mask & (target > 0)
    log_target = torch.log(target.clamp_min(1e-30))
    terms = torch.where(keep, target * (log_target - log_predicted), torch.zeros_like(target))
    return terms.sum(dim=-1)


class InfoNCELoss(nn.Module):
    """``L_nce``: InfoNCE over the candidate set with one or more gold positives per query.

    ``-log(sum_{d in pos} exp s(q,d) / sum_{d in C} exp s(q,d))``, averaged over the queries that
    have at least one positive; queries without gold passages (e.g. FreebaseQA) are skipped.
    Reference: van den Oord et al. 2018; multi-positive form as in DPR/Tevatron training.
    """

    def forward(self, scores: Tensor, positives: Tensor, mask: Tensor) -> Tensor:
        """Args: scores ``[B, C]``; positives ``[B, C]`` bool; mask ``[B, C]`` bool."""
        positives = positives & mask
        has_positive = positives.any(dim=-1)
        if not has_positive.any():
            return scores.sum() * 0.0
        log_probs = masked_log_softmax(scores, mask)
        positive_mass = torch.logsumexp(log_probs.masked_fill(~positives, _NEG), dim=-1)
        return -positive_mass[has_positive].mean()


class LSRAlignmentLoss(nn.Module):
    """``L_align = KL(Q_LSR(.|q,y) || P_R(.|q))``: align the retriever with what helps the LM.

    The target ``Q_LSR`` is a softmax of the LM's answer log-likelihood given each candidate,
    at temperature ``beta``, and is not back-propagated through.
    Reference: REPLUG LSR (Shi et al. 2023), as used by Invar-RAG (arXiv 2411.07021).

    Args:
        beta: Temperature of the LM likelihood distribution.
    """

    def __init__(self, beta: float = 1.0):
        super().__init__()
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.beta = beta

    def forward(self, scores: Tensor, lm_logprobs: Tensor, mask: Tensor) -> Tensor:
        """Args: scores ``[B, C]``; lm_logprobs ``[B, C]``; mask ``[B, C]`` bool."""
        target = lsr_distribution(lm_logprobs.detach(), mask, self.beta)
        return kl_divergence(target, masked_log_softmax(scores, mask), mask).mean()


class InvarianceLoss(nn.Module):
    """``L_invar``: fit the invariant part of the LM signal and agree across query variants.

    For ``V`` variants (query rewrites and context resizings) with LSR targets ``Q^(v)``:
    ``inv(d) = mean_v Q^(v)(d) - kappa * std_v Q^(v)(d)`` (population std),
    ``T = normalize(relu(inv))`` (falling back to ``mean_v Q^(v)`` where ``relu(inv)`` is all
    zero), and
    ``L = mean_v KL(T || P_R(.|q^(v))) + mu * mean_{v != w} symKL(P_R(.|q^(v)), P_R(.|q^(w)))``
    with ``symKL(p, r) = KL(p || r) + KL(r || p)``.
    Reference: Invar-RAG (arXiv 2411.07021), DESIGN.md §2.

    Args:
        beta: Temperature of the LSR distributions.
        kappa: Weight of the across-variant standard deviation (variance penalty).
        mu: Weight of the cross-variant consistency term.
    """

    def __init__(self, beta: float = 1.0, kappa: float = 1.0, mu: float = 0.1):
        super().__init__()
        if beta <= 0 or kappa < 0 or mu < 0:
            raise ValueError(f"need beta > 0, kappa >= 0, mu >= 0; got {beta}, {kappa}, {mu}")
        self.beta, self.kappa, self.mu = beta, kappa, mu

    def invariant_target(self, lm_logprobs: Tensor, mask: Tensor) -> Tensor:
        """``T`` of shape ``[B, C]`` from LM scores ``[B, V, C]`` and mask ``[B, C]``."""
        variant_mask = mask.unsqueeze(1).expand_as(lm_logprobs)
        q = lsr_distribution(lm_logprobs.detach(), variant_mask, self.beta)
        mean = q.mean(dim=1)
        inv = torch.relu(mean - self.kappa * q.std(dim=1, unbiased=False)) * mask
        total = inv.sum(dim=-1, keepdim=True)
        return torch.where(total > 0, inv / total.clamp_min(1e-30), mean)

    def forward(self, scores: Tensor, lm_logprobs: Tensor, mask: Tensor) -> Tensor:
        """Args: scores ``[B, V, C]`` (retriever scores of each query variant); lm_logprobs
        ``[B, V, C]``; mask ``[B, C]`` bool."""
        if scores.shape != lm_logprobs.shape or scores.dim() != 3:
            raise ValueError(f"scores and lm_logprobs must both be [B, V, C]; got "
                             f"{tuple(scores.shape)} and {tuple(lm_logprobs.shape)}")
        target = self.invariant_target(lm_logprobs, mask)
        variant_mask = mask.unsqueeze(1).expand_as(scores)
        log_p = masked_log_softmax(scores, variant_mask)
        fit = kl_divergence(target.unsqueeze(1).expand_as(log_p), log_p, variant_mask).mean()
        variants = scores.shape[1]
        if variants < 2 or self.mu == 0:
            return fit
        p = log_p.exp() * variant_mask
        pairs = [
            kl_divergence(p[:, v], log_p[:, w], mask) + kl_divergence(p[:, w], log_p[:, v], mask)
            for v in range(variants) for w in range(v + 1, variants)
        ]
        return fit + self.mu * torch.stack(pairs).mean()


class QuestionLikelihoodLoss(nn.Module):
    """``L_gen``: the generative objective, ``-r(q, d+)`` averaged over positive candidates.

    ``r`` is the scorer's length-normalised log-likelihood of the question after the passage
    prompt, so this keeps the LM a question model of relevant passages (UPR's score made
    likelier where it should be high). Queries without positives add nothing.
    Reference: query likelihood retrieval (Ponte & Croft 1998; UPR, Sachan et al. 2022).
    """

    def forward(self, question_logprobs: Tensor, positives: Tensor, mask: Tensor) -> Tensor:
        """Args: question_logprobs ``[B, C]`` (``r``); positives, mask ``[B, C]`` bool."""
        positives = positives & mask
        if not positives.any():
            return question_logprobs.sum() * 0.0
        return -question_logprobs[positives].mean()


class InvarRetrievalLoss(nn.Module):
    """``L = L_nce + alpha * L_align + lambda * L_invar + gamma * L_gen``; each term can be
    switched off (``gamma = 0`` switches ``L_gen`` off).

    Args:
        alpha: Weight of ``L_align``.
        lam: Weight of ``L_invar``.
        gamma: Weight of ``L_gen`` (:class:`QuestionLikelihoodLoss`).
        beta, kappa, mu: See :class:`LSRAlignmentLoss` and :class:`InvarianceLoss`.
        use_nce, use_align, use_invar: Ablation switches.
    """

    def __init__(self, alpha: float = 1.0, lam: float = 1.0, beta: float = 1.0,
                 kappa: float = 1.0, mu: float = 0.1, use_nce: bool = True,
                 use_align: bool = True, use_invar: bool = True, gamma: float = 0.0):
        super().__init__()
        if not (use_nce or use_align or use_invar or gamma > 0):
            raise ValueError("at least one of use_nce, use_align, use_invar, gamma > 0 must be on")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.alpha, self.lam, self.gamma = alpha, lam, gamma
        self.nce = InfoNCELoss() if use_nce else None
        self.align = LSRAlignmentLoss(beta) if use_align else None
        self.invar = InvarianceLoss(beta, kappa, mu) if use_invar else None
        self.gen = QuestionLikelihoodLoss() if gamma > 0 else None

    def forward(self, scores: Tensor, mask: Tensor, positives: Tensor | None = None,
                lm_logprobs: Tensor | None = None, variant_scores: Tensor | None = None,
                variant_lm_logprobs: Tensor | None = None,
                question_logprobs: Tensor | None = None) -> dict[str, Tensor]:
        """Return ``{"loss", and each active term}``.

        Args:
            scores: ``[B, C]`` retriever scores ``s`` of the original queries.
            mask: ``[B, C]`` real candidates.
            positives: ``[B, C]`` relevant passages (for ``L_nce`` and ``L_gen``).
            lm_logprobs: ``[B, C]`` LM answer log-likelihoods (for ``L_align``).
            variant_scores, variant_lm_logprobs: ``[B, V, C]`` (for ``L_invar``).
            question_logprobs: ``[B, C]`` the scorer's ``r`` (for ``L_gen``).
        """
        terms: dict[str, Tensor] = {}
        total = scores.new_zeros(())
        if self.nce is not None or self.gen is not None:
            if positives is None:
                raise ValueError("L_nce / L_gen are on but no positives were given")
        if self.nce is not None:
            terms["nce"] = self.nce(scores, positives, mask)
            total = total + terms["nce"]
        if self.align is not None:
            if lm_logprobs is None:
                raise ValueError("L_align is on but no lm_logprobs were given")
            terms["align"] = self.align(scores, lm_logprobs, mask)
            total = total + self.alpha * terms["align"]
        if self.invar is not None:
            if variant_scores is None or variant_lm_logprobs is None:
                raise ValueError("L_invar is on but variant scores/lm_logprobs were not given")
            terms["invar"] = self.invar(variant_scores, variant_lm_logprobs, mask)
            total = total + self.lam * terms["invar"]
        if self.gen is not None:
            if question_logprobs is None:
                raise ValueError("L_gen is on but no question_logprobs were given")
            terms["gen"] = self.gen(question_logprobs, positives, mask)
            total = total + self.gamma * terms["gen"]
        return {"loss": total, **terms}
