"""The trained parts beside the LoRA: the projector ``P`` that turns coarse vectors into soft
tokens, and the linear head on the question's hidden states."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .settings import ScorerSettings


class Projector(nn.Module):
    """``P``: coarse vectors ``[B, d_c]`` -> ``m`` soft tokens ``[B, m, H]``.

    A two-layer MLP; each soft token is rescaled to the mean norm of the LM's token embeddings
    so it starts in the range the LM was trained on.
    """

    def __init__(self, coarse_dim: int, hidden: int, num_tokens: int, model_dim: int,
                 token_norm: float):
        super().__init__()
        self.num_tokens, self.model_dim = num_tokens, model_dim
        self.net = nn.Sequential(nn.Linear(coarse_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, num_tokens * model_dim))
        self.register_buffer("token_norm", torch.tensor(float(token_norm)))

    def forward(self, coarse: Tensor) -> Tensor:
        out = self.net(coarse).view(coarse.shape[0], self.num_tokens, self.model_dim)
        return nn.functional.normalize(out, dim=-1) * self.token_norm

    @classmethod
    def for_model(cls, lm: nn.Module, coarse_dim: int, settings: ScorerSettings) -> Projector:
        """A fresh projector sized for ``lm``'s embeddings."""
        embeddings = lm.get_input_embeddings()
        return cls(coarse_dim, settings.projector_hidden, settings.num_soft_tokens,
                   embeddings.embedding_dim,
                   embeddings.weight.detach().float().norm(dim=-1).mean().item())

    @classmethod
    def from_file(cls, path: str | Path) -> Projector:
        """Load a projector saved with safetensors (shapes come from the weights)."""
        from safetensors.torch import load_file

        state = load_file(str(path))
        first, last = state["net.0.weight"], state["net.2.weight"]
        model_dim = int(state["model_dim"]) if "model_dim" in state else None
        if model_dim is None:
            raise ValueError(f"{path}: not a projector file (no model_dim)")
        projector = cls(first.shape[1], first.shape[0], last.shape[0] // model_dim, model_dim,
                        float(state["token_norm"]))
        projector.load_state_dict({k: v for k, v in state.items() if k != "model_dim"})
        return projector

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        state["model_dim"] = torch.tensor(self.model_dim)
        save_file(state, str(path))


def zero_head(width: int) -> nn.Linear:
    """A linear head ``[H] -> 1`` starting at zero (the scorer starts as it was)."""
    head = nn.Linear(width, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head
