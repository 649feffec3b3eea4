"""LoRA targets resolved from the loaded model: by default the attention projections that
vLLM's multi-LoRA serves for its architecture; a user's own list is checked against the
model's linear layers. ``lm_head`` and the embeddings are never targets (vLLM's prompt
log-probabilities drop a LoRA delta on ``lm_head``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

AUTO = "auto"
_LLAMA_STYLE = (("q_proj", "k_proj", "v_proj", "o_proj"), ("gate_proj", "up_proj", "down_proj"))
# model_type -> (attention projections, MLP projections), as vLLM names the LoRA modules
FAMILIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3",
                     "gemma3_text"), _LLAMA_STYLE),
    "phi3": (("qkv_proj", "o_proj"), ("gate_up_proj", "down_proj")),
}
NEVER = ("lm_head", "embed_tokens")


def linear_layers(model: Any) -> list[str]:
    """The names (last part) of the model's linear layers, ``lm_head`` left out; under a peft
    wrapper, the base model's."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set()
    for name, module in base.named_modules():
        parts = name.split(".")
        if not isinstance(module, torch.nn.Linear) or {"lora_A", "lora_B"} & set(parts):
            continue
        names.add(parts[-2] if parts[-1] == "base_layer" else parts[-1])  # a LoRA-wrapped one
    return sorted(names - set(NEVER))


def model_type(model: Any) -> str:
    """The architecture's ``model_type`` (``llama``, ``qwen2``, ``phi3``, ...)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return str(getattr(base.config, "model_type", type(base).__name__))


def resolve_lora_targets(model: Any, requested: Sequence[str]) -> list[str]:
    """``requested`` checked against ``model``'s linear layers; ``["auto"]``: the attention
    projections of its architecture.

    Raises:
        ValueError: A target the model does not have, ``lm_head`` or the embeddings, or
            ``auto`` for an architecture without known targets; the message names the model's
            linear layers and the ``lora_targets`` setting.
    """
    layers = linear_layers(model)
    kind = model_type(model)
    hint = (f"this {kind} model's linear layers are {layers}; set lora_targets to some of "
            "them (the config's or the command line's lora_targets)")
    if list(requested) == [AUTO]:
        if kind not in FAMILIES:
            raise ValueError(f"no default LoRA targets are known for model type {kind!r}: "
                             f"{hint}")
        requested = FAMILIES[kind][0]
    never = sorted(set(requested) & set(NEVER))
    if never:
        raise ValueError(f"{never} cannot be LoRA targets (vLLM drops a LoRA delta on lm_head "
                         f"and the embeddings are tied to it): {hint}")
    missing = [t for t in requested if t not in layers]
    if missing or not requested:
        raise ValueError(f"LoRA targets {missing or list(requested)} are not layers of this "
                         f"model: {hint}")
    return list(requested)
