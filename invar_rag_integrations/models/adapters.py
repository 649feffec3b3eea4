"""Switching peft adapters on one shared copy of the base model."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

_LOCKS_GUARD = threading.Lock()


def model_lock(model: Any) -> threading.RLock:
    """One re-entrant lock per model: adapter switches and the forward passes they wrap are
    serialised, so threads sharing the model never run under each other's adapter."""
    with _LOCKS_GUARD:
        lock = model.__dict__.get("_invar_adapter_lock")
        if lock is None:
            lock = model.__dict__["_invar_adapter_lock"] = threading.RLock()
        return lock


@contextlib.contextmanager
def use_adapter(model: Any, adapter: str | None) -> Iterator[None]:
    """Run the block with peft adapter ``adapter`` active, or the plain base model for ``None``.

    Which parameters are trainable is left as it was (peft's ``set_adapter`` would change it),
    and the previously active adapter is restored afterwards.

    Raises:
        ValueError: ``adapter`` is not loaded, or the model has no adapters at all.
    """
    adapters = getattr(model, "peft_config", None)
    with model_lock(model):
        if adapters is None:
            if adapter is not None:
                raise ValueError(f"adapter {adapter!r} requested, but the model has no adapters")
            yield
            return
        if adapter is None:
            with model.disable_adapter():
                yield
            return
        if adapter not in adapters:
            raise ValueError(f"unknown adapter {adapter!r}; loaded: {sorted(adapters)}")
        previous = model.active_adapter
        if previous == adapter:
            yield
            return
        trainable = {n: p.requires_grad for n, p in model.named_parameters()}

        def activate(name: str) -> None:
            model.set_adapter(name)
            for n, p in model.named_parameters():
                p.requires_grad_(trainable[n])

        activate(adapter)
        try:
            yield
        finally:
            activate(previous)


MAX_LORA_RANK = 64  # vLLM's largest LoRA rank


def check_lora(r: int, targets: Sequence[str]) -> None:
    """Reject LoRA settings vLLM could not serve (the target names are checked against the
    model when it is loaded: ``lora_targets.resolve_lora_targets``).

    Raises:
        ValueError: ``r`` outside ``1..64`` or no targets.
    """
    if r < 1 or r > MAX_LORA_RANK:
        raise ValueError(f"lora_r must be in 1..{MAX_LORA_RANK} (vLLM serves ranks up to "
                         f"{MAX_LORA_RANK}), got {r}")
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"lora_targets must be a non-empty list of layer names (or ['auto']), "
                         f"got {list(targets)}")


def lora_config(model: Any, r: int, alpha: int, dropout: float, targets: Sequence[str]) -> Any:
    """A peft ``LoraConfig`` for causal LM ``model``, its targets resolved against its layers
    (``["auto"]``: its architecture's attention projections)."""
    from peft import LoraConfig

    from .lora_targets import resolve_lora_targets

    check_lora(r, targets)
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=resolve_lora_targets(model, targets), bias="none")
