"""Serving benchmark: ``python -m benchmarks.serving`` (part of ``make bench``; needs
``make install-vllm``).

On the same RAG prompts (the shipped system's prompts over its own top-k for val questions of
nq, popqa_longtail and triviaqa_dev), in one run: generation with HF + peft (float32 and
bfloat16 weights) and with vLLM (the generator adapter, the base model, both mixed in one
batch; float32 and bfloat16), at batch 1 and batch 32, every prompt generating exactly
``--new-tokens`` tokens (no stop string), plus the OpenAI-compatible server under 32
concurrent clients, engine start time and peak memory; and re-ranking throughput of the
stage-2 scorer on HF and through the engine, with vLLM's prefix caching on and off.
Writes ``benchmarks/results/serving.json``.
"""

from __future__ import annotations

import argparse
import copy
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from benchmarks.run import save_and_render
from invar_rag_integrations.demo import SHIPPED_SYSTEM

ADAPTER = "generator"


@contextmanager
def peak_rss(found: list[float]) -> Iterator[None]:
    """Sample this process and its children every 0.2 s; append the peak RSS (MB)."""
    import psutil

    me, peak, done = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    pass
            peak[0] = max(peak[0], total)
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield
    finally:
        done.set()
        sampler.join()
        found.append(peak[0] / 2**20)


def generation_rows(system: str, generate: Callable[[Sequence[str]], list], prompts: list[str],
                    single: int) -> list[dict]:
    """tokens/s and s/question at batch 32 (all prompts in one call) and batch 1 (the first
    ``single`` prompts one by one), after one warm-up prompt."""
    generate(prompts[:1])
    rows = []
    runs = [("batch 32", [prompts])] + [("batch 1", [[p] for p in prompts[:single]])] * bool(single)
    for label, batches in runs:
        started, tokens, count = time.perf_counter(), 0, 0
        for batch in batches:
            tokens += sum(g.num_tokens for g in generate(batch))
            count += len(batch)
        seconds = time.perf_counter() - started
        rows += [_row(system, label, "tokens_per_s", tokens / seconds, count),
                 _row(system, label, "s_per_question", seconds / count, count)]
        print(f"{system} {label}: {tokens / seconds:.1f} tokens/s", flush=True)
    return rows


def engine_rows(name: str, engine, prompts: list[str], options: dict, single: int) -> list[dict]:
    """The generator adapter (LoRA, or merged), the base model, and both mixed in one batch
    (half each)."""
    rows = generation_rows(name if engine.merged else f"{name}-lora",
                           lambda b: engine.generate(b, adapter=ADAPTER, **options), prompts,
                           single)
    if engine.merged:  # the base model is not served beside a merged adapter
        return rows
    engine.generate(prompts[:2], adapter=[ADAPTER, None], **options)  # warm up both at once
    half = len(prompts) // 2
    return (rows + generation_rows(f"{name}-base", lambda b: engine.generate(b, **options),
                                   prompts, single)
            + generation_rows(f"{name}-mixed", lambda b: engine.generate(
                b, adapter=[ADAPTER if i < half else None for i in range(len(b))], **options),
                prompts, 0))


def _row(system: str, measured_on: str, metric: str, value: float, n: int) -> dict:
    return {"system": system, "split": "val", "dataset": measured_on, "metric": metric,
            "value": value, "n": n}


def scorer_rows(system: str, scorer, questions: list[str], candidates: list[list]) -> list[dict]:
    scorer.score_batch(questions[:2], candidates[:2])  # warm up
    started = time.perf_counter()
    scorer.score_batch(questions, candidates)
    seconds = time.perf_counter() - started
    pairs = sum(len(c) for c in candidates)
    print(f"{system}: {pairs / seconds:.1f} pairs/s", flush=True)
    return [_row(system, "re-rank", "pairs_per_s", pairs / seconds, pairs)]


def served_rows(system_dir: str, prompts: list[str], new_tokens: int, single: int,
                merge: bool) -> list[dict]:
    """The OpenAI endpoint: 32 concurrent clients (one prompt each), and one client at a time;
    the generator as a LoRA adapter or merged into the base model."""
    import openai

    from invar_rag_integrations.serving import VLLMServer

    def ask(client: openai.OpenAI, prompt: str) -> int:
        answer = client.completions.create(model=ADAPTER, prompt=prompt, max_tokens=new_tokens,
                                           temperature=0)
        return answer.usage.completion_tokens

    system = "vllm-served-merged" if merge else "vllm-served"
    rss: list[float] = []
    rows = []
    with peak_rss(rss):
        started = time.perf_counter()
        with VLLMServer(system_dir, port=8765, log="runs/bench-server.log",
                        engine_args=["--max-model-len", "2048"], merge=merge) as server:
            start_s = time.perf_counter() - started
            client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)
            ask(client, prompts[0])  # warm up
            for label, workers, batch in (("32 clients", 32, prompts),
                                          ("1 client", 1, prompts[:single])):
                started = time.perf_counter()
                with ThreadPoolExecutor(workers) as pool:
                    tokens = sum(pool.map(lambda p: ask(client, p), batch))
                seconds = time.perf_counter() - started
                rows += [_row(system, label, "tokens_per_s", tokens / seconds, len(batch)),
                         _row(system, label, "s_per_question", seconds / len(batch),
                              len(batch))]
                print(f"{system} {label}: {tokens / seconds:.1f} tokens/s", flush=True)
    return rows + [_row(system, "start", "engine_start_s", start_s, 1),
                   _row(system, "run", "peak_rss_mb", rss[0], 1)]


def main(argv: list[str] | None = None) -> None:
    import torch

    from invar_rag_integrations.evaluation import odqa_corpus, odqa_questions
    from invar_rag_integrations.evaluation.qa_eval import QA_DATASETS, sample_per_dataset
    from invar_rag_integrations.generation import HFGenerator
    from invar_rag_integrations.generation.vllm_backend import VLLMGenerator, merged_model
    from invar_rag_integrations.paths import cache_dir
    from invar_rag_integrations.rag import InvarRAG
    from invar_rag_integrations.retrieval.search_cache import cached_search
    from invar_rag_integrations.system import base_of

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--system", default=str(SHIPPED_SYSTEM), help="trained system directory")
    parser.add_argument("--data-dir", help="folder with odqa/ (default: $INVAR_RAG_DATA or "
                                           "../shared/data)")
    parser.add_argument("--prompts", type=int, default=32, help="prompts in the batch")
    parser.add_argument("--single", type=int, default=8, help="prompts timed one at a time")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rerank-questions", type=int, default=20)
    args = parser.parse_args(argv)

    passages = odqa_corpus(args.data_dir)
    rag = InvarRAG.from_pretrained(args.system, corpus=passages)
    rag.retriever.show_progress = False
    questions = sample_per_dataset(odqa_questions("val", QA_DATASETS, data=args.data_dir),
                                   -(-args.prompts // len(QA_DATASETS)), seed=0)
    texts = [q.question for q in questions][: args.prompts]
    sources = rag.sources(cached_search(rag.retriever, texts, rag.settings.k,
                                        cache_dir() / "search", show_progress=False))
    prompts = [rag.prompt(q, s).text for q, s in zip(texts, sources)]
    options = {"max_new_tokens": args.new_tokens, "stop": ()}
    rows: list[dict] = []

    def hf(generator: HFGenerator, adapter: str | None) -> Callable[[Sequence[str]], list]:
        return lambda batch: generator.generate(batch, batch_size=len(batch), adapter=adapter,
                                                **options)

    rss: list[float] = []
    with peak_rss(rss):
        rows += generation_rows("hf-peft", hf(rag.generator, ADAPTER), prompts, args.single)
        model = rag.generator.model
        lock = model.__dict__.get("_invar_adapter_lock")  # a copy gets its own lock
        bf16 = HFGenerator(copy.deepcopy(model, {id(lock): None}).to(torch.bfloat16),
                           rag.generator.tokenizer)
        rows += generation_rows("hf-peft-bf16", hf(bf16, ADAPTER), prompts, args.single)
    rows.append(_row("hf-peft", "run (float32 + bf16 copy)", "peak_rss_mb", rss[0], 1))
    short = {"max_new_tokens": rag.settings.max_new_tokens}  # the trained answers, first lines
    same = [a.text == b.text for a, b in zip(rag.generator.generate(prompts, adapter=ADAPTER,
                                                                    batch_size=32, **short),
                                             bf16.generate(prompts, adapter=ADAPTER,
                                                           batch_size=32, **short))]
    rows.append(_row("hf-peft-bf16", "answers vs float32", "same_answers",
                     sum(same) / len(same), len(same)))
    del bf16

    base = base_of(rag.retriever.scorer.lm).invar_source
    adapter_dir = f"{args.system}/{ADAPTER}"
    rerank_questions = texts[: args.rerank_questions]
    candidates = [[s.passage for s in found] for found in
                  rag.retrieve_batch(rerank_questions, k=rag.retriever.settings.candidates)]
    rows += scorer_rows("hf-scorer", rag.retriever.scorer, rerank_questions, candidates)
    merged = merged_model(base.path, adapter_dir)
    for name, settings in (("vllm", {"dtype": "float32"}),
                           ("vllm-bf16", {"dtype": "bfloat16"}),
                           ("vllm-no-prefix-cache", {"dtype": "float32",
                                                     "enable_prefix_caching": False}),
                           ("vllm-merged", {"dtype": "float32"}),
                           ("vllm-merged-bf16", {"dtype": "bfloat16"})):
        rss: list[float] = []
        with peak_rss(rss):
            started = time.perf_counter()
            if name.startswith("vllm-merged"):
                engine = VLLMGenerator(merged, name=base.name, merged=ADAPTER,
                                       max_model_len=2048, **settings)
            else:
                engine = VLLMGenerator(base.path, {ADAPTER: adapter_dir}, name=base.name,
                                       max_model_len=2048, **settings)
            start_s = time.perf_counter() - started
            if name != "vllm-no-prefix-cache":
                rows += engine_rows(name, engine, prompts, options, args.single)
            if engine.merged is None:  # the scorer reads through the base model
                scorer = copy.copy(rag.retriever.scorer)
                scorer.use_engine(engine)
                rows += scorer_rows(f"{name}-scorer", scorer, rerank_questions, candidates)
            engine.shutdown()
        rows += [_row(name, "start", "engine_start_s", start_s, 1),
                 _row(name, "run", "peak_rss_mb", rss[0], 1)]
    for merge in (False, True):
        rows += served_rows(args.system, prompts, args.new_tokens, args.single, merge)
    save_and_render("serving", rows, "benchmarks.serving", argv)


if __name__ == "__main__":
    main()
