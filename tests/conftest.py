"""Shared fixtures: tiny models built from configs (no hub ids), and an isolated cache."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_WORDS = (
    "the a an of in on to and is was who what when where which how many year first planet sun moon "
    "river lake mountain city capital invented discovered language program computer passage query "
    "question answer paris france london england water fire earth mars jupiter saturn titan "
    "fleming penicillin python java linux git nile baikal everest wright flight 1903 1928"
).split()


def _train_texts() -> list[str]:
    from invar_rag_integrations.demo import demo_passages, demo_questions

    texts = [p.full_text() for p in demo_passages()] + [q.question for q in demo_questions()]
    return texts + [" ".join(_WORDS)] * 3


@pytest.fixture(autouse=True)
def _isolated_cache(request: pytest.FixtureRequest, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Give each unit test an empty cache; real-model tests share the user's cache (the
    converted SmolLM2 folder and corpus embeddings are reused across runs)."""
    if request.node.get_closest_marker("model") is None:
        monkeypatch.setenv("INVAR_RAG_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama causal LM with a byte-level BPE tokenizer, saved as an HF folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_train_texts(), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT sentence-transformers model (mean pooling) saved as a folder."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-encoder")
    hf_dir = path / "hf"
    hf_dir.mkdir()
    words = sorted({w.strip(".,:;()'\"").lower() for t in _train_texts() for w in t.split()} - {""})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (hf_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(str(hf_dir / "vocab.txt"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=256)
    BertModel(config).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    transformer = Transformer(str(hf_dir), max_seq_length=128)
    model = SentenceTransformer(modules=[transformer, Pooling(32, "mean")], device="cpu")
    model.save(str(path / "st"))
    return path / "st"


def write_odqa(root: Path) -> Path:
    """A data folder in the shared ODQA layout, written from the project's demo data."""
    import json

    from invar_rag_integrations.demo import demo_passages, demo_questions

    odqa = root / "data" / "odqa"
    odqa.mkdir(parents=True)
    with (odqa / "corpus.jsonl").open("w", encoding="utf-8") as handle:
        for p in demo_passages():
            handle.write(json.dumps({"id": p.id, "title": p.title, "text": p.text}) + "\n")
    datasets = ["nq", "squad", "popqa_longtail", "triviaqa_dev"]
    with (odqa / "dev_questions.jsonl").open("w", encoding="utf-8") as handle:
        for i, q in enumerate(demo_questions() * 2):
            record = {"dataset": datasets[i % 4], "id": f"{q.id}-{i}", "question": q.question,
                      "answers": list(q.answers), "gold_passage_ids": list(q.gold_passage_ids)}
            handle.write(json.dumps(record) + "\n")
    train = root / "data" / "train"
    train.mkdir()
    (train / "FreebaseQA-dev.txt").write_text("Who wrote Hamlet? | william shakespeare \n"
                                              "no separator here\n", encoding="utf-8")
    return root / "data"


@pytest.fixture()
def odqa_dir(tmp_path: Path) -> Path:
    """A data folder in the shared ODQA layout, written from the project's demo data."""
    return write_odqa(tmp_path)


def _retriever_config(folder: Path, lm: Path, encoder: Path, data: Path,
                      **overrides: object) -> Path:
    import json

    (data / "train").mkdir(exist_ok=True)
    (data / "train" / "FreebaseQA-dev.txt").write_text(
        "Who wrote Hamlet? | william shakespeare\nWhat is the capital of France? | paris\n",
        encoding="utf-8")
    config = {"base_model": str(lm), "coarse_encoder": str(encoder), "data_dir": str(data),
              "questions_per_dataset": [2, 2, 1, 2], "tune_questions_per_dataset": 1,
              "candidates": 4, "lora_r": 4, "precision": "float32",
              "output_dir": str(folder / "system"), "num_train_epochs": 2,
              "per_device_train_batch_size": 2, "learning_rate": 1e-3, "save_steps": 2,
              "logging_steps": 1, "eval_every": 2, "use_cpu": True, "report_to": "none",
              **overrides}
    path = folder / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def generator_config(folder: Path, system: Path, data: Path, **overrides: object) -> Path:
    """Write a tiny generator-training config for ``system``; keys can be overridden."""
    import json

    config = {"system_dir": str(system), "data_dir": str(data), "k": 2, "n_shots": 1,
              "max_passage_words": 20, "max_prompt_tokens": 400, "max_new_tokens": 6,
              "lora_r": 4, "lora_alpha": 8, "questions_per_dataset": [2, 2, 2, 1, 1],
              "output_dir": str(folder / "generator-run"), "num_train_epochs": 1,
              "per_device_train_batch_size": 2, "learning_rate": 1e-3, "save_steps": 1,
              "logging_steps": 1, "use_cpu": True, "report_to": "none", **overrides}
    path = folder / "generator.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


@pytest.fixture()
def retriever_config(tiny_lm_dir: Path, tiny_encoder_dir: Path,
                     odqa_dir: Path) -> Callable[..., Path]:
    """Write a tiny retriever-training config into a folder; keys can be overridden."""
    def write(folder: Path, **overrides: object) -> Path:
        return _retriever_config(folder, tiny_lm_dir, tiny_encoder_dir, odqa_dir, **overrides)

    return write


@pytest.fixture(scope="session")
def tiny_rag_system(tmp_path_factory: pytest.TempPathFactory, tiny_lm_dir: Path,
                    tiny_encoder_dir: Path) -> Path:
    """A tiny trained system (retriever + generator, indexed over the demo corpus), built once
    with its own cache folder; tests must not modify it."""
    from invar_rag_integrations.cli import main as cli

    root = tmp_path_factory.mktemp("tiny-rag")
    data = write_odqa(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INVAR_RAG_CACHE", str(root / "cache"))
        cli(["train-retriever", str(_retriever_config(root, tiny_lm_dir, tiny_encoder_dir, data,
                                                      num_train_epochs=1))])
        cli(["train-generator", str(generator_config(root, root / "system", data,
                                                     max_steps=2))])
    return root / "system"


def ticks_while(awaitables: list) -> tuple[int, list]:
    """Run ``awaitables`` concurrently beside a 10 ms ticker; return how often it ticked (a
    blocked event loop does not tick) and their results."""
    import asyncio

    async def run() -> tuple[int, list]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        results = await asyncio.gather(*awaitables)
        task.cancel()
        return ticks, results

    return asyncio.run(run())


@pytest.fixture(scope="module")
def shipped_rag():
    """The shipped system on the HF backend over the demo corpus (real SmolLM2 and MiniLM)."""
    from invar_rag_integrations.demo import SHIPPED_SYSTEM, demo_passages
    from invar_rag_integrations.rag import InvarRAG

    rag = InvarRAG.from_pretrained(SHIPPED_SYSTEM, corpus=demo_passages())
    rag.retriever.show_progress = False
    return rag


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def abstaining(rag, threshold: float, weight: float = 0.0):
    """``rag``'s parts as a pipeline that abstains by default, with the confidence
    ``sigmoid(weight * relevance)`` (0.5 when ``weight`` is 0) and ``threshold``."""
    from invar_rag_integrations.generation.abstention import AbstentionModel
    from invar_rag_integrations.invar.calibration import Logistic
    from invar_rag_integrations.rag import RAGPipeline

    model = AbstentionModel(Logistic(("relevance",), (weight,), 0.0), threshold)
    return RAGPipeline(rag.generator, rag.retriever, list(rag.passages.values()), rag.settings,
                       rag.template, rag.adapter, abstention=model, abstain=True)
