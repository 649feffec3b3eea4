"""Retriever-stage data preparation and the training driver, on tiny models."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from invar_rag_integrations.data import Passage, Question
from invar_rag_integrations.models import load_base_lm
from invar_rag_integrations.training.candidates import mine_candidates, resize_context
from invar_rag_integrations.training.lsr import LSRScorer, lsr_cache_file, lsr_prompt
from invar_rag_integrations.training.retriever_data import (
    candidate_set,
    make_variants,
    passage_view,
    select_questions,
)
from invar_rag_integrations.training.train_retriever import parse_arguments
from invar_rag_integrations.training.trainer_utils import last_complete_checkpoint

ROOT = Path(__file__).resolve().parents[1]

PASSAGES = {p.id: p for p in [
    Passage("g", "Alexander Fleming discovered penicillin in 1928.", "Fleming"),
    Passage("a", "Penicillin was first found by Fleming in London.", "Penicillin"),
    Passage("b", "The Nile is the longest river.", "Nile"),
    Passage("c", "Mars is the fourth planet.", "Mars"),
]}


def test_mining_puts_gold_first_and_skips_answer_bearing_negatives() -> None:
    question = Question("q", "who discovered penicillin", ("Fleming",), "nq", ("g",))
    got = mine_candidates(question, [["a", "g", "b"], ["c", "b"]], PASSAGES, 3)
    assert got.ids == ["g", "c", "b"] and got.positives == [True, False, False]
    kept = mine_candidates(question, [["a", "b"]], PASSAGES, 3, drop_answer_negatives=False)
    assert kept.ids == ["g", "a", "b"]


def test_mining_without_gold_uses_answer_positives_and_may_be_empty() -> None:
    question = Question("q", "who discovered penicillin", ("Fleming",), "popqa_longtail")
    got = mine_candidates(question, [["b", "a"], ["g"]], PASSAGES, 4)
    assert got.ids == ["b", "g", "a"] and got.positives == [False, True, True]
    assert mine_candidates(question, [["b", "a"]], PASSAGES, 4,
                           answer_positives=False).positives == [False, False]
    assert mine_candidates(question, [[], []], PASSAGES, 4).ids == []


def test_context_resizing_keeps_the_answer_in_the_window() -> None:
    words = [f"w{i}" for i in range(100)]
    words[70] = "Fleming"
    passage = Passage("p", " ".join(words), "Title")
    window = resize_context(passage, ["Fleming"], 10)
    assert window.startswith("Title\n") and "Fleming" in window
    assert len(window.split("\n")[1].split()) == 10
    assert resize_context(passage, ["absent"], 5) == "Title\nw0 w1 w2 w3 w4"
    assert resize_context(Passage("s", "short text"), ["x"], 50) == "short text"
    with pytest.raises(ValueError):
        resize_context(passage, ["x"], 0)


def test_variants_are_seeded_and_ordered() -> None:
    views = make_variants("who discovered penicillin", ["prefix", "typo", "wh_end"], 2, [32],
                          seed=0, paraphrases=["which person found penicillin"])
    assert views[0].kind == "original" and views[0].context_words == 0
    assert [v.kind for v in views][-2:] == ["paraphrase", "context32"]
    assert views[-1].query == "who discovered penicillin" and views[-1].context_words == 32
    assert len(views) == 5
    assert views == make_variants("who discovered penicillin", ["prefix", "typo", "wh_end"], 2,
                                  [32], seed=0, paraphrases=["which person found penicillin"])


def test_candidate_sets_keep_stage1_order_add_gold_and_mark_answer_positives() -> None:
    question = Question("q", "who discovered penicillin", ("Fleming",), "nq", ("g",))
    got = candidate_set(question, ["b", "a", "c"], PASSAGES, 3)
    assert got.ids == ["b", "a", "g"] and got.positives == [False, True, True]
    found = candidate_set(question, ["g", "b", "c", "a"], PASSAGES, 3)
    assert found.ids == ["g", "b", "c"] and found.positives == [True, False, False]
    no_gold = Question("q", "who discovered penicillin", ("Fleming",), "freebaseqa")
    assert candidate_set(no_gold, ["b", "a"], PASSAGES, 3).positives == [False, True]
    with_empty = {**PASSAGES, "e": Passage("e", "  ", "Empty")}
    assert candidate_set(no_gold, ["e", "b", "a"], with_empty, 2).ids == ["b", "a"]
    assert passage_view(PASSAGES["g"], ["Fleming"], 0) == PASSAGES["g"]  # read as served
    assert passage_view(PASSAGES["g"], ["1928"], 2) == Passage("g", "in 1928.", "Fleming")


def test_lsr_scores_match_the_lm_and_resume_from_the_cache(tiny_lm_dir: Path,
                                                           tmp_path: Path) -> None:
    lm, tokenizer = load_base_lm(str(tiny_lm_dir))
    pairs = [(lsr_prompt("Fleming\nFleming discovered penicillin.", "who discovered it"),
              "Fleming"), (lsr_prompt("Mars is a planet.", "what is mars"), "a planet")]
    cache = lsr_cache_file(tmp_path, "tiny")
    scores = LSRScorer(lm, tokenizer, cache, batch_size=2, show_progress=False).score(pairs)
    for (prompt, answer), score in zip(pairs, scores):  # reference: full logits, one at a time
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(lm(torch.tensor([p + a])).logits[0], -1)
        expected = sum(logp[len(p) + t - 1, tok].item() for t, tok in enumerate(a))
        assert score == pytest.approx(expected, abs=1e-4)
    with cache.open("a") as handle:
        handle.write('{"k": "cut sho')  # a line cut short by a kill
    resumed = LSRScorer(lm, tokenizer, cache, show_progress=False)
    resumed._forward = lambda batch: pytest.fail("cached scores were recomputed")
    assert np.allclose(resumed.score(pairs), scores)
    resumed._forward = lambda batch: [0.0] * len(batch)
    resumed.score([("new prompt", "x")])
    assert len(LSRScorer(lm, tokenizer, cache).cache) == 3  # the new line is intact
    assert resumed.computed == 1
    with pytest.raises(ValueError, match=f"built with base model {lm.invar_source.identity}.*"
                                         "base model is other-model"):
        LSRScorer(lm, tokenizer, cache, model_identity="other-model")


def test_config_with_unknown_keys_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"output_dir": "x", "learning_rat": 1, "mystery": 2}))
    with pytest.raises(ValueError, match=r"unknown config keys \['learning_rat', 'mystery'\]"):
        parse_arguments([str(path)])


def test_flags_override_the_config(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"output_dir": "x", "lam": 2.0, "num_train_epochs": 3}))
    model, data, loss, train = parse_arguments([str(path), "--use_invar", "false", "--lam", "0.5"])
    assert (loss.use_invar, loss.lam, train.num_train_epochs) == (False, 0.5, 3)
    _, data, _, _ = parse_arguments([str(path), "--chunking", "llama-1024",
                                     "--max_passage_tokens", "256", "--max_windows", "1"])
    assert data.chunking == "llama-1024"
    with pytest.raises(ValueError, match="chunking must be one of .*got 'llama-2048'"):
        parse_arguments([str(path), "--chunking", "llama-2048"])
    with pytest.raises(ValueError, match="window_stride must be between 1 and"):
        parse_arguments([str(path), "--window_stride", "400"])


@pytest.mark.slow
def test_driver_trains_keeps_the_best_tuning_step_and_indexes(
        tmp_path: Path, retriever_config: Callable[..., Path], odqa_dir: Path) -> None:
    from invar_rag_integrations.cli import main as cli
    from invar_rag_integrations.training.catalog import make_retriever

    config = retriever_config(tmp_path)
    cli(["train-retriever", str(config)])
    system = tmp_path / "system"
    manifest = json.loads((system / "invar_rag.json").read_text())
    metrics = manifest["metrics"]["retriever"]
    questions, tune = select_questions(["nq", "squad", "popqa_longtail", "freebaseqa"],
                                       [2, 2, 1, 2], 1, 0, str(odqa_dir))
    assert metrics["train_examples"] == len(questions) and metrics["train_samples_per_second"] > 0
    curve = metrics["tuning_curve"]
    assert tune and curve[0]["step"] == 0 and [r["step"] for r in curve] == sorted(
        r["step"] for r in curve)
    best = max(curve, key=lambda r: (r["mean"], -r["step"]))
    assert metrics["best_step"] == best["step"]
    assert manifest["retriever"]["adapter"] == "retriever"
    assert manifest["training"]["retriever"]["loss"]["use_invar"] is True
    assert (system / "index" / "passages.jsonl").is_file()
    assert list((Path(os.environ["INVAR_RAG_CACHE"]) / "lsr").glob("lsr-*.jsonl"))
    retriever = make_retriever(str(system))
    assert retriever.name == "invar"
    assert len(retriever.search(["who discovered penicillin"], 3)[0].ids) == 3


@pytest.mark.slow
def test_driver_trains_on_long_nodes_read_in_windows(
        tmp_path: Path, retriever_config: Callable[..., Path], odqa_dir: Path) -> None:
    from invar_rag_integrations.cli import main as cli
    from invar_rag_integrations.data import load_passages, save_passages
    from invar_rag_integrations.training import retriever_trainer
    from invar_rag_integrations.training.catalog import make_retriever

    corpus = odqa_dir / "odqa" / "corpus.jsonl"  # each topic's passages: one long article
    save_passages(corpus, [Passage(p.id, p.text, p.id.split("-")[0])
                           for p in load_passages(corpus)])
    read = []
    real = retriever_trainer.ScorerTrainingModel.lm_scores

    def spy(self, variants, views, *args):
        read.append(max(len(w) for v in range(len(variants[0])) for nodes in
                        [self.reranker.scorer.tokens.windows(variants[0][v], views[0][v])[0]]
                        for w in nodes))
        return real(self, variants, views, *args)

    retriever_trainer.ScorerTrainingModel.lm_scores = spy
    try:
        cli(["train-retriever", str(retriever_config(tmp_path, num_train_epochs=1)),
             "--chunking", "lc-1000", "--max_passage_tokens", "64", "--max_windows", "2"])
    finally:
        retriever_trainer.ScorerTrainingModel.lm_scores = real
    assert read and max(read) == 2  # candidates were read in (pre-selected) windows
    retriever = make_retriever(str(tmp_path / "system"))
    assert all("#" in pid for pid in retriever.passage_ids)  # the index holds the nodes
    assert len(retriever.passage_ids) < 40 and retriever.settings.max_windows == 2
    assert len(retriever.search(["who discovered penicillin"], 3)[0].ids) == 3


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
        tmp_path: Path, retriever_config: Callable[..., Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from invar_rag_integrations.training import retriever_trainer, train_retriever

    real_forward = retriever_trainer.ScorerTrainingModel.forward
    steps = []

    def poisoned(self, **batch):
        steps.append(1)
        if len(steps) == 3:  # the third step sees a corrupt LM score
            batch["lm_logprobs"] = batch["lm_logprobs"] * float("nan")
        return real_forward(self, **batch)

    monkeypatch.setattr(retriever_trainer.ScorerTrainingModel, "forward", poisoned)
    config = retriever_config(tmp_path)
    with pytest.raises(SystemExit, match="training stopped at step 3: non-finite .*"
                                         "Last good checkpoint: .*checkpoint-2"):
        train_retriever.main([str(config)])
    assert not (tmp_path / "system" / "invar_rag.json").exists()


def _driver(config: Path, *flags: str, launcher: list[str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = (launcher or [sys.executable]) + [
        "-m", "invar_rag_integrations.training.train_retriever", str(config), *flags]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_training_resumes_after_sigkill(tmp_path: Path,
                                        retriever_config: Callable[..., Path]) -> None:
    config = retriever_config(tmp_path, num_train_epochs=400,
                     index_after_training=False)
    system = tmp_path / "system"
    process = _driver(config)
    deadline = time.monotonic() + 120
    while last_complete_checkpoint(system) is None and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = last_complete_checkpoint(system)
    assert killed_at is not None and not (system / "invar_rag.json").exists()
    step = int(killed_at.rsplit("-", 1)[1])
    rerun = _driver(config, "--num_train_epochs", "10")  # few steps in all: finish quickly
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert f"resuming from {killed_at}" in output
    state = json.loads((Path(last_complete_checkpoint(system)) / "trainer_state.json")
                       .read_text())
    assert state["global_step"] == state["max_steps"] > step
    assert (system / "invar_rag.json").is_file()


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path: Path,
                                       retriever_config: Callable[..., Path]) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun is installed with torch"
    config = retriever_config(tmp_path)
    process = _driver(config, "--ddp_backend", "gloo",
                      launcher=[torchrun, "--standalone", "--nproc_per_node", "2"])
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    state = json.loads((Path(last_complete_checkpoint(tmp_path / "system"))
                        / "trainer_state.json").read_text())
    assert state["global_step"] == 4  # 6-7 examples, 2 processes x batch 2, 2 epochs
    assert (tmp_path / "system" / "index" / "stage1").is_dir()


@pytest.mark.parametrize("config", sorted((ROOT / "training" / "configs").glob("retriever_*.json")),
                         ids=lambda p: p.name)
def test_shipped_configs_parse(config: Path) -> None:
    gpu_only = "gpu" in config.name and not torch.cuda.is_available()
    flags = ["--bf16", "false"] if gpu_only else []  # bf16 is refused without a GPU
    model, data, loss, train = parse_arguments([str(config), *flags])
    model.settings()  # retriever settings are valid
    assert len(data.train_datasets) == len(data.questions_per_dataset)


def test_training_scores_equal_the_serving_scores(tiny_lm_dir: Path,
                                                  tiny_encoder_dir: Path) -> None:
    from peft import get_peft_model

    from invar_rag_integrations.invar import InvarSettings, TwoStageRetriever
    from invar_rag_integrations.models.adapters import lora_config
    from invar_rag_integrations.training.losses import InvarRetrievalLoss
    from invar_rag_integrations.training.retriever_trainer import ScorerTrainingModel

    retriever = TwoStageRetriever.zero_shot(  # long nodes: read as windows, as serving reads them
        str(tiny_lm_dir), str(tiny_encoder_dir),
        InvarSettings(candidates=4, cos_weight=0.3, bm25_weight=0.7, max_passage_tokens=16,
                      window_aggregation="softmax", max_windows=2), precision="float32",
        show_progress=False)
    retriever.coarse_encoder.max_seq_length = 12  # stage 1 reads windows too
    long = Passage("long", "the river flows past the city " * 6 + "Fleming found penicillin.",
                   "Medicine")
    retriever.index([*PASSAGES.values(), long])
    scorer = retriever.scorer
    scorer.lm = get_peft_model(scorer.lm, lora_config(scorer.lm, 4, 8, 0.0, ["q_proj", "v_proj"]),
                               adapter_name="retriever")
    scorer.adapter = "retriever"
    with torch.no_grad():  # a LoRA away from zero, so the adapter matters
        for name, parameter in scorer.lm.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.05)
    query = "who discovered penicillin"
    [served] = retriever.search([query], 4)
    model = ScorerTrainingModel(retriever.reranker, InvarRetrievalLoss(use_invar=False), True, 3)
    reranker = retriever.reranker
    views = [[passage_view(retriever.passages[i], (), 0) for i in served.ids]]
    batch = {"query_coarse": torch.from_numpy(reranker.coarse([query]))[None],
             "passage_coarse": torch.from_numpy(reranker.coarse(
                 [retriever.passages[i].full_text() for i in served.ids]))[None],
             "bm25": torch.from_numpy(np.stack(retriever.bm25_term([query], [served.ids])))[None],
             "mask": torch.ones(1, 4, dtype=torch.bool)}
    batch["cosine"] = torch.from_numpy(np.stack(retriever.passage_cosines(
        batch["query_coarse"][0].numpy(), [served.ids])))[None]
    assert "long" in served.ids and len(scorer.tokens.windows(query, [long])[0][0]) == 2
    assert batch["bm25"].max() > 0  # the BM25 term takes part
    r = model.lm_scores([[query]], [views], batch["mask"], batch["query_coarse"],
                        batch["passage_coarse"])
    trained = model.weights(r, batch["cosine"], batch["bm25"])[0, 0]
    served_fused = retriever.candidate_scores([query], [served]).fused[0]  # what served ranks
    assert np.allclose(trained.detach().numpy(), served_fused, atol=1e-4)
    out = model(variants=[[query]], views=[views], positives=torch.tensor([[True, False] * 2]),
                lm_logprobs=torch.zeros(1, 1, 4), **batch)
    out["loss"].backward()
    assert model.weights.cos_weight.grad is not None
    assert model.weights.bm25_weight.grad is not None
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(p.grad is not None for p in lora)


def test_lm_paraphrases_give_variants_per_question(tiny_lm_dir: Path) -> None:
    from invar_rag_integrations.generation.hf import HFGenerator
    from invar_rag_integrations.training.retriever_data import lm_paraphrases

    lm, tokenizer = load_base_lm(str(tiny_lm_dir))
    torch.manual_seed(0)
    got = lm_paraphrases(["who discovered penicillin", "capital of france"],
                         HFGenerator(lm, tokenizer), 2)
    assert len(got) == 2 and all(len(p) <= 2 and all(t.strip() for t in p) for p in got)


@pytest.mark.slow
@pytest.mark.parametrize("name, family", [("retriever_llama2_7b_gpu", "llama"),
                                          ("retriever_qwen2.5_7b_gpu", "qwen2"),
                                          ("retriever_qwen2.5_0.5b_gpu", "qwen2")])
def test_gpu_configs_run_one_step_on_a_tiny_model_of_their_family(
        name: str, family: str, tmp_path: Path, tiny_lm_dir: Path, tiny_encoder_dir: Path,
        odqa_dir: Path) -> None:
    """The GPU configs (the same driver under torchrun / accelerate) on CPU, one step, each
    with its base model swapped for a tiny random model of the same family."""
    from test_families import tiny_family_model

    from invar_rag_integrations.training import train_retriever

    config = ROOT / "training" / "configs" / f"{name}.json"
    base = tiny_lm_dir if family == "llama" else tiny_family_model(tmp_path, family)
    (odqa_dir / "train" / "FreebaseQA-dev.txt").write_text("Who wrote Hamlet? | shakespeare\n")
    system = train_retriever.main([
        str(config), "--base_model", str(base), "--coarse_encoder", str(tiny_encoder_dir),
        "--data_dir", str(odqa_dir), "--output_dir", str(tmp_path / "gpu"), "--bf16", "false",
        "--precision", "float32", "--max_steps", "1", "--dataloader_num_workers", "0",
        "--eval_every", "1", "--lsr_cache_dir", str(tmp_path / "lsr")])
    manifest = json.loads((system / "invar_rag.json").read_text())
    assert manifest["retriever"]["settings"]["candidates"] == 50
    assert [r["step"] for r in manifest["metrics"]["retriever"]["tuning_curve"]] == [0, 1]
    adapter = json.loads((system / "retriever" / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == set(json.loads(config.read_text())["lora_targets"])


@pytest.mark.slow
def test_a_frozen_lm_trains_the_head_on_cached_outputs(
        tmp_path: Path, retriever_config: Callable[..., Path]) -> None:
    from invar_rag_integrations.training import train_retriever
    from invar_rag_integrations.training.catalog import make_retriever

    config = retriever_config(tmp_path, train_lora=False, head=True, num_train_epochs=3,
                              learning_rate=0.05)
    system = train_retriever.main([str(config)])
    manifest = json.loads((system / "invar_rag.json").read_text())
    assert manifest["retriever"]["adapter"] is None
    assert manifest["retriever"]["head"] == "head.safetensors"
    curve = manifest["metrics"]["retriever"]["tuning_curve"]
    assert [r["step"] for r in curve] == [0, 1, 2, 3] and all("loss" in r for r in curve[1:])
    retriever = make_retriever(str(system))
    assert retriever.scorer.head is not None and retriever.scorer.adapter is None
    assert len(retriever.search(["who discovered penicillin"], 3)[0].ids) == 3
    again = train_retriever.main([str(config), "--output_dir", str(tmp_path / "again")])
    assert json.loads((again / "invar_rag.json").read_text())["retriever"]["hash"] == \
        manifest["retriever"]["hash"]  # cached outputs, seeded: the same head
    weights_only = train_retriever.main([str(config), "--head", "false",
                                         "--output_dir", str(tmp_path / "weights")])
    assert make_retriever(str(weights_only)).name == "invar"  # trained: not "upr-zero-shot"


def test_training_and_serving_read_nodes_through_one_function(tiny_lm_dir: Path,
                                                              tiny_encoder_dir: Path,
                                                              monkeypatch) -> None:
    """The training model's scores come from ``InvarScorer.read`` with gradients, serving's
    from the same function under inference mode: no second fan-out, batching or regrouping."""
    from invar_rag_integrations.invar import InvarSettings, TwoStageRetriever
    from invar_rag_integrations.invar.scorer import InvarScorer
    from invar_rag_integrations.training.losses import InvarRetrievalLoss
    from invar_rag_integrations.training.retriever_trainer import ScorerTrainingModel

    retriever = TwoStageRetriever.zero_shot(str(tiny_lm_dir), str(tiny_encoder_dir),
                                            InvarSettings(candidates=2), precision="float32",
                                            show_progress=False)
    calls: list[bool] = []
    read = InvarScorer.read

    def spy(self, *args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return read(self, *args, **kwargs)

    monkeypatch.setattr(InvarScorer, "read", spy)
    retriever.index(list(PASSAGES.values()))
    retriever.search(["who discovered penicillin"], 2)
    assert calls == [False]
    model = ScorerTrainingModel(retriever.reranker, InvarRetrievalLoss(use_invar=False), True, 2)
    views = [[list(PASSAGES.values())[:2]]]
    r = model.lm_scores([["who discovered penicillin"]], views, torch.ones(1, 2, dtype=bool),
                        torch.zeros(1, 1, 4), torch.zeros(1, 2, 4))
    assert calls == [False, True] and r.shape == (1, 1, 2)
