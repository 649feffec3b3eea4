"""The precision a scorer computes in: chosen from the device and the CPU's flags, and the
bfloat16 copy of the model that serves scores without gradients."""

from __future__ import annotations

import contextlib
import functools
from copy import deepcopy
from pathlib import Path

import torch
from torch import nn

from .passage_cache import weights_version
from .settings import PRECISIONS


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AMX or AVX512-BF16); without it, bf16
    matrix products are far slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on CUDA and on CPUs with native bf16 (AMX, AVX512-BF16), else float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        fast = device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16())
        return torch.bfloat16 if fast else torch.float32
    return torch.bfloat16 if precision == "bfloat16" else torch.float32


def autocast(dtype: torch.dtype, model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """bfloat16 autocast for a float32 ``model`` when ``dtype`` is bfloat16, else nothing."""
    weights = model.get_input_embeddings().weight
    if dtype == torch.bfloat16 and weights.dtype != torch.bfloat16:
        return torch.autocast(weights.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class ServingCopy:
    """The model that scores without gradients. With bfloat16 precision and float32 weights, a
    bfloat16 copy of ``lm`` (on AMX, matrix products on bf16 weights ran ~1.3x faster than under
    autocast, which re-casts every weight on every pass); it is made again when ``lm`` is
    replaced or its weights change in place (an optimizer step, a loaded state). Otherwise
    ``lm`` itself."""

    def __init__(self) -> None:
        self._copy: tuple[nn.Module, int, nn.Module] | None = None  # (source, version, copy)

    def of(self, lm: nn.Module, dtype: torch.dtype) -> nn.Module:
        weights = lm.get_input_embeddings().weight.dtype
        if dtype != torch.bfloat16 or weights == torch.bfloat16:
            return lm
        version = weights_version(lm)
        if self._copy is None or self._copy[0] is not lm or self._copy[1] != version:
            self._copy = None  # free the stale copy first
            lock = lm.__dict__.get("_invar_adapter_lock")  # each model gets its own lock
            copy = deepcopy(lm, {id(lock): None} if lock is not None else {})
            self._copy = (lm, version, copy.to(torch.bfloat16).eval())
        return self._copy[2]
