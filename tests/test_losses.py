from __future__ import annotations

import math

import pytest
import torch

from invar_rag_integrations.training.losses import (
    InfoNCELoss,
    InvarianceLoss,
    InvarRetrievalLoss,
    LSRAlignmentLoss,
)


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_align_is_kl_of_lm_target_against_retriever_not_reverse():
    # Q_LSR = [.5, .5] (equal LM scores), P_R = [.9, .1]
    scores = torch.log(t([[0.9, 0.1]])).requires_grad_()
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss = LSRAlignmentLoss(beta=1.0)(scores, t([[-2.0, -2.0]]), mask)
    forward_kl = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)  # 0.5108
    reverse_kl = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)  # 0.3681
    assert loss.item() == pytest.approx(forward_kl, abs=1e-5)
    assert abs(loss.item() - reverse_kl) > 0.1
    loss.backward()
    assert scores.grad[0, 0] > 0 > scores.grad[0, 1]  # pushes mass to the second candidate


def test_align_beta_sharpens_the_target_and_masked_candidates_do_not_count():
    mask = torch.tensor([[True, True, False]])
    lm = t([[math.log(0.75), math.log(0.25), 100.0]])  # padded candidate has a huge LM score
    perfect = LSRAlignmentLoss(beta=1.0)(t([[math.log(3.0), 0.0, 50.0]]), lm, mask)
    assert perfect.item() == pytest.approx(0.0, abs=1e-6)
    # beta = 0.5 squares the odds: target [0.9, 0.1]; retriever at [.75, .25]
    sharp = LSRAlignmentLoss(beta=0.5)(t([[math.log(3.0), 0.0, 0.0]]), lm, mask)
    expected = 0.9 * math.log(0.9 / 0.75) + 0.1 * math.log(0.1 / 0.25)
    assert sharp.item() == pytest.approx(expected, abs=1e-5)


def test_infonce_multi_positive_and_rows_without_positives_are_skipped():
    scores = t([[2.0, 0.0, 0.0], [5.0, 1.0, 1.0]])
    mask = torch.ones(2, 3, dtype=torch.bool)
    positives = torch.tensor([[True, True, False], [False, False, False]])
    loss = InfoNCELoss()(scores, positives, mask)
    expected = -math.log((math.e**2 + 1) / (math.e**2 + 2))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    none = InfoNCELoss()(scores.requires_grad_(), torch.zeros(2, 3, dtype=torch.bool), mask)
    assert none.item() == 0.0
    none.backward()  # still part of the graph


def test_infonce_ignores_padded_candidates_and_padded_positives():
    scores = t([[1.0, 0.0, 9.0]])
    mask = torch.tensor([[True, True, False]])
    positives = torch.tensor([[True, False, True]])
    loss = InfoNCELoss()(scores, positives, mask)
    assert loss.item() == pytest.approx(-math.log(math.e / (math.e + 1)), abs=1e-6)


def test_invariant_target_hand_worked():
    # two variants with Q1 = [.6, .4, 0], Q2 = [.2, .8, 0] (third candidate padded)
    q1, q2 = [0.6, 0.4, 1.0], [0.2, 0.8, 1.0]
    lm = torch.log(t([[q1, q2]]))
    mask = torch.tensor([[True, True, False]])
    target = InvarianceLoss(kappa=1.0).invariant_target(lm, mask)
    # mean [.4, .6], std [.2, .2] -> inv [.2, .4] -> T [1/3, 2/3]
    assert target[0].tolist() == pytest.approx([1 / 3, 2 / 3, 0.0], abs=1e-6)
    plain = InvarianceLoss(kappa=0.0).invariant_target(lm, mask)
    assert plain[0].tolist() == pytest.approx([0.4, 0.6, 0.0], abs=1e-6)
    # kappa large enough to zero every candidate -> fall back to the mean
    fallback = InvarianceLoss(kappa=10.0).invariant_target(lm, mask)
    assert fallback[0].tolist() == pytest.approx([0.4, 0.6, 0.0], abs=1e-6)


def test_invariance_loss_fit_and_consistency_terms():
    lm = torch.log(t([[[0.6, 0.4], [0.2, 0.8]]]))
    mask = torch.ones(1, 2, dtype=torch.bool)
    target = [1 / 3, 2 / 3]
    p1, p2 = [0.5, 0.5], [0.25, 0.75]
    scores = torch.log(t([[p1, p2]]))

    def kl(a, b):
        return sum(x * math.log(x / y) for x, y in zip(a, b))

    fit = (kl(target, p1) + kl(target, p2)) / 2
    consistency = kl(p1, p2) + kl(p2, p1)
    no_mu = InvarianceLoss(kappa=1.0, mu=0.0)(scores, lm, mask)
    assert no_mu.item() == pytest.approx(fit, abs=1e-5)
    with_mu = InvarianceLoss(kappa=1.0, mu=0.5)(scores, lm, mask)
    assert with_mu.item() == pytest.approx(fit + 0.5 * consistency, abs=1e-5)
    with pytest.raises(ValueError, match=r"\[B, V, C\]"):
        InvarianceLoss()(scores[:, 0], lm[:, 0], mask)


def test_total_loss_weights_and_ablation_switches():
    scores = t([[1.0, 0.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    positives = torch.tensor([[True, False]])
    lm = t([[-1.0, -3.0]])
    variant_scores, variant_lm = t([[[1.0, 0.0], [0.5, 0.0]]]), t([[[-1.0, -3.0], [-2.0, -2.5]]])
    full = InvarRetrievalLoss(alpha=2.0, lam=3.0)(scores, mask, positives, lm, variant_scores,
                                                   variant_lm)
    expected = full["nce"] + 2.0 * full["align"] + 3.0 * full["invar"]
    assert full["loss"].item() == pytest.approx(expected.item(), abs=1e-6)
    no_invar = InvarRetrievalLoss(use_invar=False)(scores, mask, positives, lm)
    assert set(no_invar) == {"loss", "nce", "align"}
    with pytest.raises(ValueError, match="no lm_logprobs"):
        InvarRetrievalLoss(use_nce=False, use_invar=False)(scores, mask)
    with pytest.raises(ValueError, match="at least one"):
        InvarRetrievalLoss(use_nce=False, use_align=False, use_invar=False)


def test_generative_term_is_the_mean_question_likelihood_of_the_positives():
    scores, mask = t([[2.0, 0.0, 1.0]]), torch.tensor([[True, True, False]])
    positives = torch.tensor([[True, False, True]])  # the third is padding: ignored
    r = t([[-1.5, -0.5, -9.0]]).requires_grad_()
    out = InvarRetrievalLoss(use_nce=False, use_align=False, use_invar=False, gamma=2.0)(
        scores, mask, positives, question_logprobs=r)
    assert out["gen"].item() == pytest.approx(1.5) and out["loss"].item() == pytest.approx(3.0)
    out["loss"].backward()
    assert r.grad.tolist() == [[-2.0, 0.0, 0.0]]  # raises r of the positive only
    none = InvarRetrievalLoss(use_align=False, use_invar=False, gamma=1.0)(
        scores, mask, torch.zeros(1, 3, dtype=torch.bool), question_logprobs=r)
    assert none["gen"].item() == 0.0
    with pytest.raises(ValueError, match="question_logprobs"):
        InvarRetrievalLoss(use_nce=False, use_align=False, use_invar=False, gamma=1.0)(
            scores, mask, positives)
    with pytest.raises(ValueError, match="gamma"):
        InvarRetrievalLoss(gamma=-1.0)
