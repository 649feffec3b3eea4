"""Training plumbing shared by both stages: config parsing and small, resumable checkpoints."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser, Trainer

CHECKPOINT_WEIGHTS = "model.safetensors"


def parse_config(dataclass_types: Sequence[type], argv: Sequence[str]) -> tuple[Any, ...]:
    """A JSON file (unknown keys are an error naming them), then optional ``--flag value``
    pairs that override it, or flags alone; returns one instance per dataclass type."""
    parser = HfArgumentParser(list(dataclass_types))
    argv = list(argv)
    if argv and argv[0].endswith(".json"):
        path = Path(argv.pop(0))
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read config {path}: {err}") from None
        known = {f for dc in parser.dataclass_types for f in dc.__dataclass_fields__}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"{path}: unknown config keys {unknown}")
        parser.set_defaults(**config)
    return tuple(parser.parse_args_into_dataclasses(args=argv))


class TrainedWeightsTrainer(Trainer):
    """HF ``Trainer`` whose checkpoints hold only the trained weights (LoRA adapters, projector),
    as safetensors; the base model never goes into a checkpoint."""

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        from safetensors.torch import save_file

        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        if not self.args.should_save:
            return
        model = self.accelerator.unwrap_model(self.model)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        state = {n: t.detach().cpu().contiguous() for n, t in model.state_dict().items()
                 if n in trainable}
        save_file(state, os.path.join(output_dir, CHECKPOINT_WEIGHTS), metadata={"format": "pt"})

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        from safetensors.torch import load_file

        model = model or self.model
        state = load_file(os.path.join(resume_from_checkpoint, CHECKPOINT_WEIGHTS))
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        missing = sorted(trainable - set(state))
        if missing:
            raise ValueError(f"{resume_from_checkpoint}: checkpoint lacks {len(missing)} trained "
                             f"weights (e.g. {missing[0]}); was it written by another config?")
        model.load_state_dict(state, strict=False)


def last_complete_checkpoint(output_dir: str | os.PathLike[str]) -> str | None:
    """The newest ``checkpoint-N`` whose trainer state was written (a kill mid-save is skipped)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    steps = []
    for child in folder.iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", child.name)
        if match and (child / "trainer_state.json").is_file() and \
                (child / CHECKPOINT_WEIGHTS).is_file():
            steps.append((int(match.group(1)), child))
    return str(max(steps)[1]) if steps else None
