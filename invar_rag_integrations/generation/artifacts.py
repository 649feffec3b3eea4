"""The ``generator`` adapter in a system directory: settings, saving and checked loading.

The manifest's ``generator`` entry records the adapter folder, the base model it was trained
on, its LoRA settings, the prompt template and generation settings it was trained with, and a
hash of its weights (DESIGN.md §3).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..models.adapters import check_lora, lora_config
from ..models.lora_targets import AUTO, resolve_lora_targets
from ..models.registry import hash_file
from ..system import FORMAT, MANIFEST, is_system_dir, model_identity, read_manifest, write_stage
from .prompts import PromptTemplate

GENERATOR_ADAPTER = "generator"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass
class GeneratorSettings:
    """How the generator answers: top-``k`` passages, token budgets and its LoRA adapter.

    Attributes:
        k: Passages shown per question.
        max_new_tokens: Longest answer.
        max_prompt_tokens: Prompt budget; longer prompts lose passage words first, then
            question words (``None``: the model's context minus ``max_new_tokens``).
        lora_r, lora_alpha, lora_dropout, lora_targets: The ``generator`` LoRA adapter
            (``lora_targets``: layer names, or ``["auto"]`` for the base model's attention
            projections; the manifest records the resolved names).
    """

    k: int = 3
    max_new_tokens: int = 24
    max_prompt_tokens: int | None = None
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: [AUTO])

    def __post_init__(self) -> None:
        if self.k < 1 or self.max_new_tokens < 1:
            raise ValueError(f"k and max_new_tokens must be positive, got {self.k}, "
                             f"{self.max_new_tokens}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be positive, got {self.max_prompt_tokens}")
        check_lora(self.lora_r, self.lora_targets)

    def prompt_budget(self, context_window: int) -> int:
        """``max_prompt_tokens`` (default: no limit of its own), within the model's context minus
        the answer's room (an engine may be started with a shorter context)."""
        room = context_window - self.max_new_tokens
        return min(self.max_prompt_tokens, room) if self.max_prompt_tokens else room


def add_generator_adapter(lm: Any, settings: GeneratorSettings) -> Any:
    """Add a fresh ``generator`` LoRA adapter to ``lm`` (a peft model gains a second adapter on
    the same base weights; a plain model is wrapped). It becomes the active adapter and the
    only trainable weights; ``settings.lora_targets`` becomes the resolved layer names."""
    from peft import get_peft_model

    settings.lora_targets = resolve_lora_targets(lm, settings.lora_targets)
    config = lora_config(lm, settings.lora_r, settings.lora_alpha, settings.lora_dropout,
                         settings.lora_targets)
    if hasattr(lm, "peft_config"):
        lm.add_adapter(GENERATOR_ADAPTER, config)
        lm.set_adapter(GENERATOR_ADAPTER)  # training runs with it active
    else:
        lm = get_peft_model(lm, config, adapter_name=GENERATOR_ADAPTER)
    for name, parameter in lm.named_parameters():
        parameter.requires_grad_(f".{GENERATOR_ADAPTER}." in name)
    return lm


def _weights_hash(weights: Path, base_identity: str) -> str:
    return hashlib.sha256(f"{hash_file(weights)}|{base_identity}".encode()).hexdigest()


def save_generator(lm: Any, path: str | os.PathLike[str], settings: GeneratorSettings,
                   template: PromptTemplate, training_args: dict[str, Any] | None = None,
                   metrics: dict[str, Any] | None = None) -> Path:
    """Save the ``generator`` adapter and its manifest entry into system directory ``path``.

    Raises:
        ValueError: The directory's manifest names another base model.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    base = model_identity(lm.get_base_model())
    manifest = read_manifest(path) if is_system_dir(path) else {"format": FORMAT}
    if manifest.get("base_model", base)["identity"] != base["identity"]:
        raise ValueError(f"{path}: the system's base model is {manifest['base_model']['name']!r} "
                         f"({manifest['base_model']['identity']}), but the generator was "
                         f"trained on {base['name']!r} ({base['identity']})")
    lm.save_pretrained(str(path), selected_adapters=[GENERATOR_ADAPTER])
    manifest.setdefault("base_model", base)
    write_stage(path, manifest, "generator", {
        "adapter": GENERATOR_ADAPTER, "base_model": base, "settings": asdict(settings),
        "prompt": template.to_dict(),
        "hash": _weights_hash(path / GENERATOR_ADAPTER / ADAPTER_WEIGHTS, base["identity"]),
    }, training_args, metrics)
    return path


def generator_entry(path: str | os.PathLike[str], base_identity: dict[str, str]
                    ) -> tuple[Path, GeneratorSettings, PromptTemplate]:
    """The checked ``generator`` entry of system directory ``path`` for a base model of
    identity ``base_identity`` (``{"name", "identity"}``).

    Returns:
        ``(adapter folder, settings, template)``.

    Raises:
        FileNotFoundError: The manifest names an adapter file that is missing (names the path).
        ValueError: No generator in the manifest, a different base model (names both), or
            weights that differ from the ones the manifest was written for.
    """
    path = Path(path)
    entry = read_manifest(path).get("generator")
    if entry is None:
        raise ValueError(f"{path / MANIFEST}: this system has no trained generator")
    weights = path / entry["adapter"] / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"generator adapter file missing: {weights}")
    found, trained = base_identity, entry["base_model"]
    if found["identity"] != trained["identity"]:
        raise ValueError(f"{path}: the generator adapter was trained on base model "
                         f"{trained['name']!r} ({trained['identity']}), but the loaded base "
                         f"model is {found['name']!r} ({found['identity']}); use the same base "
                         f"model")
    if _weights_hash(weights, found["identity"]) != entry["hash"]:
        raise ValueError(f"{weights}: differs from the weights the manifest was written for")
    return (weights.parent, GeneratorSettings(**entry["settings"]),
            PromptTemplate.from_dict(entry["prompt"]))


def load_generator(lm: Any, path: str | os.PathLike[str]) -> tuple[Any, GeneratorSettings,
                                                                    PromptTemplate]:
    """Attach the ``generator`` adapter of system directory ``path`` to ``lm`` (same base model,
    checked by :func:`generator_entry`).

    Returns:
        ``(lm, settings, template)``: ``lm`` is the peft model now holding the adapter.
    """
    from peft import PeftModel

    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    folder, settings, template = generator_entry(path, model_identity(base))
    if hasattr(lm, "peft_config"):
        if GENERATOR_ADAPTER in lm.peft_config:
            raise ValueError("this model already holds a generator adapter")
        lm.load_adapter(str(folder), adapter_name=GENERATOR_ADAPTER, is_trainable=False)
    else:
        lm = PeftModel.from_pretrained(lm, str(folder), adapter_name=GENERATOR_ADAPTER)
    lm.eval()
    return lm, settings, template
