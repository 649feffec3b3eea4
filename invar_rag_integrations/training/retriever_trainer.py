"""The scorer's training model (the serving score over candidate sets, the Invar-RAG losses, a
NaN guard) and the tuning-slice learning curve that keeps the best checkpoint."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformers import TrainerCallback

from invar_rag_integrations.data import Passage, Question
from invar_rag_integrations.evaluation.metrics import tuning_accuracy
from invar_rag_integrations.invar.fusion import fused_score
from invar_rag_integrations.invar.reranker import Stage2Reranker

from .losses import InvarRetrievalLoss

BEST_WEIGHTS = "best.safetensors"
CURVE_FILE = "tuning_curve.json"


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


class FusionWeights(nn.Module):
    """The fused score's weights ``w`` and ``w_bm25`` as parameters: ``forward(r, cos, bm25)``
    is :func:`fused_score` (the BM25 term only when stage 1 has BM25).

    Args:
        settings: Their starting values, ``tau`` and stage 1.
        learn: Train them (else they stay at their settings).
    """

    def __init__(self, settings: Any, learn: bool):
        super().__init__()
        self.tau, self.uses_bm25 = settings.tau, settings.stage1 == "rrf"
        self.cos_weight = nn.Parameter(torch.tensor(float(settings.cos_weight)),
                                       requires_grad=learn)
        self.bm25_weight = nn.Parameter(torch.tensor(float(settings.bm25_weight)),
                                        requires_grad=learn and self.uses_bm25)

    def forward(self, lm: Tensor, cosine: Tensor, bm25: Tensor) -> Tensor:
        return fused_score(lm, cosine, self.cos_weight, self.tau,
                           bm25 if self.uses_bm25 else None, self.bm25_weight)

    def values(self) -> dict[str, float]:
        """The current weights, by their setting names."""
        return {"cos_weight": round(self.cos_weight.item(), 5),
                "bm25_weight": round(self.bm25_weight.item(), 5)}

    def apply_to(self, settings: Any) -> None:
        """Write the (trained) weights into ``settings``."""
        settings.cos_weight = self.cos_weight.item()
        settings.bm25_weight = self.bm25_weight.item() if self.uses_bm25 else 0.0


class ScorerTrainingModel(nn.Module):
    """Scores every query variant against its candidates with the serving score and returns the
    Invar-RAG loss.

    ``s = fused_score(r, cos, w, tau, bm25, w_bm25)`` with ``r`` from
    :meth:`InvarScorer.pair_scores`, the function serving uses; the fusion weights are
    parameters (trained when ``learn_weights``; ``w_bm25`` only with BM25 in stage 1).

    Args:
        reranker: Stage 2 (its scorer's ``retriever`` LoRA is what trains).
        loss: The weighted loss.
        learn_weights: Train the fusion weights too.
        micro_batch: Query-passage pairs per forward pass.
    """

    def __init__(self, reranker: Stage2Reranker, loss: InvarRetrievalLoss,
                 learn_weights: bool = True, micro_batch: int = 16):
        super().__init__()
        self.reranker, self.loss, self.micro_batch = reranker, loss, micro_batch
        self.lm = reranker.scorer.lm  # registers the LoRA weights as this module's parameters
        self.projector = reranker.scorer.projector  # soft tokens (None without them)
        self.head = reranker.scorer.head  # the head on the question states (None without one)
        self.weights = FusionWeights(reranker.settings, learn_weights)
        self.term_sums: dict[str, float] = defaultdict(float)
        self.term_count = 0

    def lm_scores(self, variants: list[list[str]], views: list[list[list[Passage | str]]],
                  mask: Tensor, query_coarse: Tensor, passage_coarse: Tensor) -> Tensor:
        """``r`` of shape ``[B, V, C]`` (zero where ``mask`` is false), with gradients, from
        the scorer's one reading (:meth:`InvarScorer.read`, the function serving runs under
        inference mode); coarse vectors ``[B, V, d]`` and ``[B, C, d]`` feed the soft tokens
        when there are any."""
        batch, count, width = len(variants), len(variants[0]), mask.shape[1]
        cells = [(b, v) for b in range(batch) for v in range(count)]
        kept = [[c for c in range(width) if mask[b, c]] for b in range(batch)]
        reading = self.reranker.scorer.read(
            [variants[b][v] for b, v in cells],
            [[views[b][v][c] for c in kept[b]] for b, v in cells],
            query_coarse.reshape(batch * count, -1),
            [passage_coarse[b, kept[b]] for b, _ in cells], batch_size=self.micro_batch)
        cell_of = [(b, v, c) for b, v in cells for c in kept[b]]  # of each score read
        flat = torch.cat(reading.scores)
        empty = torch.isinf(flat.detach()).nonzero()
        if len(empty):  # candidate_set leaves such passages out
            raise ValueError(f"a candidate of training example {cell_of[int(empty[0])][0]} has "
                             "no text")
        index = torch.tensor(cell_of, device=flat.device).T
        return flat.new_zeros((batch, count, width)).index_put(tuple(index), flat)

    def forward(self, variants: list[list[str]], views: list[list[list[Passage | str]]],
                query_coarse: Tensor, passage_coarse: Tensor, cosine: Tensor, bm25: Tensor,
                mask: Tensor, positives: Tensor, lm_logprobs: Tensor) -> dict[str, Tensor]:
        r = self.lm_scores(variants, views, mask, query_coarse, passage_coarse)
        scores = self.weights(r, cosine.to(r.device), bm25.to(r.device))
        out = self.loss(scores[:, 0], mask, positives=positives, lm_logprobs=lm_logprobs[:, 0],
                        variant_scores=scores, variant_lm_logprobs=lm_logprobs,
                        question_logprobs=r[:, 0])
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
    """Adds the mean of each loss term and the fusion weight to the Trainer's logs."""

    def __init__(self, model: ScorerTrainingModel):
        self.model = model

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None,
               **kwargs: Any) -> None:
        if logs is not None and "loss" in logs:
            logs.update({k: round(v, 4) for k, v in self.model.pop_term_means().items()})
            logs.update(self.model.weights.values())


def fused_accuracy(model: ScorerTrainingModel, questions: Sequence[Question],
                   candidates: Sequence[Sequence[Passage]], query_coarse: np.ndarray,
                   passage_coarse: Sequence[np.ndarray], cosines: Sequence[np.ndarray],
                   bm25: Sequence[np.ndarray]) -> dict[str, float]:
    """Acc@1 per dataset (and their mean) of the fused score over the tuning candidates."""
    scorer = model.reranker.scorer
    lm = scorer.score_batch([q.question for q in questions], candidates, query_coarse,
                            passage_coarse)
    firsts = []
    for cands, r, cosine, b in zip(candidates, lm, cosines, bm25):
        with torch.no_grad():
            s = model.weights(torch.from_numpy(r), torch.from_numpy(cosine),
                              torch.from_numpy(b)).numpy()
        firsts.append(cands[int(np.argmax(s))])
    return tuning_accuracy(questions, firsts)


def trained_state(model: nn.Module) -> dict[str, Tensor]:
    """The trainable weights of ``model`` (LoRA, fusion weight), detached on the CPU."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return {n: t.detach().cpu().contiguous().clone() for n, t in model.state_dict().items()
            if n in trainable}


class TuningCurve(TrainerCallback):
    """Acc@1 on the tuning slice at step 0 and every ``every`` steps; the best weights (step 0
    included, so training never ships something worse than its start) are kept in
    ``<output_dir>/best.safetensors`` and the curve in ``tuning_curve.json`` (both survive a
    kill and are picked up on resume).

    Args:
        model: The training model.
        output: The run's output folder.
        every: Steps between evaluations.
        evaluate: ``() -> {dataset: acc@1, "mean": ...}``.
    """

    def __init__(self, model: ScorerTrainingModel, output: Path, every: int,
                 evaluate: Any):
        self.model, self.output, self.every, self.evaluate = model, Path(output), every, evaluate
        file = self.output / CURVE_FILE
        self.curve: list[dict[str, Any]] = json.loads(file.read_text()) if file.is_file() else []

    @property
    def best(self) -> dict[str, Any] | None:
        return max(self.curve, key=lambda row: (row["mean"], -row["step"]), default=None)

    def _measure(self, step: int) -> None:
        from safetensors.torch import save_file

        was_training = self.model.training
        self.model.eval()
        table = self.evaluate()
        self.model.train(was_training)
        best = self.best
        self.curve.append({"step": step, **{k: round(v, 4) for k, v in table.items()}})
        print(f"tuning Acc@1 at step {step}: {self.curve[-1]}", file=sys.stderr, flush=True)
        if best is None or table["mean"] > best["mean"]:
            self.output.mkdir(parents=True, exist_ok=True)
            tmp = self.output / f".{BEST_WEIGHTS}"
            save_file(trained_state(self.model), str(tmp), metadata={"step": str(step)})
            tmp.replace(self.output / BEST_WEIGHTS)
        (self.output / CURVE_FILE).write_text(json.dumps(self.curve, indent=1))

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not any(row["step"] == 0 for row in self.curve) and state.global_step == 0:
            self._measure(0)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            if not any(row["step"] == state.global_step for row in self.curve):
                self._measure(state.global_step)

    def restore_best(self) -> dict[str, Any]:
        """Load the best weights into the model; returns the best curve row."""
        from safetensors.torch import load_file

        state = load_file(str(self.output / BEST_WEIGHTS))
        self.model.load_state_dict(state, strict=False)
        return self.best
