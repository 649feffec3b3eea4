"""Rerank service under load: ``python -m benchmarks.rerank_service`` (part of ``make bench``).

The same requests (a val question and its BM25 top 10 corpus passages of ~100 words each) are
scored in-process (the core reranker called directly, one request after another) and through
``invar-rag serve SYSTEM --rerank`` on loopback by 1, 4 and 16 concurrent clients (an asyncio
client with httpx; every run sends a fixed number of requests and ends by itself), with
cross-request batching on and off, and, where vLLM is installed, with the server's scorer
reading through a vLLM engine (``--scorer-engine vllm``: the GPU path; float32 on a CPU). Each
row: pairs/s, requests/s, latency p50/p95/p99, errors, pairs/s against the in-process scorer's,
and how many answers kept the in-process order (all of it, and its first document). The
scorer's precision is ``auto`` (bfloat16 where the CPU multiplies it natively): in bfloat16 a
score moves by a few hundredths with the other requests in its batch.
Writes ``benchmarks/results/rerank_service.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import time
from dataclasses import dataclass

import numpy as np

from benchmarks.run import save_and_render
from invar_rag_integrations.demo import SHIPPED_SYSTEM

CLIENTS = (1, 4, 16)
PORT = 8766


@dataclass
class Run:
    """One load run: per request, its latency (s) and result order (``None``: an error)."""

    seconds: float
    latencies: list[float]
    orders: list[list[int] | None]


def _row(system: str, metric: str, value: float, n: int) -> dict:
    return {"system": system, "split": "val", "dataset": "10 docs x ~100 words",
            "metric": metric, "value": value, "n": n}


def run_rows(system: str, run: Run, pairs_per_request: int, inprocess: Run | None) -> list[dict]:
    """The run's rows; against ``inprocess`` (same requests): its pairs/s ratio and the share
    of answers in the same order."""
    done = [i for i, order in enumerate(run.orders) if order is not None]
    n = len(run.orders)
    pairs_per_s = len(done) * pairs_per_request / run.seconds
    latency = np.array([run.latencies[i] for i in done]) * 1000
    rows = [_row(system, "pairs_per_s", pairs_per_s, n),
            _row(system, "requests_per_s", len(done) / run.seconds, n),
            *(_row(system, f"latency_p{p}_ms", float(np.percentile(latency, p)), len(done))
              for p in (50, 95, 99)),
            _row(system, "errors", n - len(done), n)]
    if inprocess is not None:
        base = n * pairs_per_request / inprocess.seconds
        same = sum(run.orders[i] == inprocess.orders[i] for i in done)
        top1 = sum(run.orders[i][0] == inprocess.orders[i][0] for i in done)
        rows += [_row(system, "pairs_per_s_vs_inprocess", pairs_per_s / base, n),
                 _row(system, "same_order", same / max(len(done), 1), len(done)),
                 _row(system, "same_top1", top1 / max(len(done), 1), len(done))]
    return rows


def in_process(reranker, requests: list[tuple[str, list[str]]]) -> Run:
    """The core reranker called directly, one request after another."""
    reranker.rerank(*requests[0])  # warm up
    latencies, orders = [], []
    started = time.perf_counter()
    for query, documents in requests:
        begun = time.perf_counter()
        orders.append([i for i, _ in reranker.rerank(query, documents)])
        latencies.append(time.perf_counter() - begun)
    return Run(time.perf_counter() - started, latencies, orders)


async def load(url: str, requests: list[tuple[str, list[str]]], clients: int) -> Run:
    """``clients`` concurrent clients send ``requests`` (each once) to ``url``."""
    import httpx

    latencies = [0.0] * len(requests)
    orders: list[list[int] | None] = [None] * len(requests)
    pending = iter(range(len(requests)))

    async def client(http: httpx.AsyncClient) -> None:
        for i in pending:  # shared: each request is sent by one client
            query, documents = requests[i]
            begun = time.perf_counter()
            try:
                answer = await http.post(f"{url}/v1/rerank", json={
                    "query": query, "documents": documents, "return_documents": False})
                answer.raise_for_status()
                orders[i] = [r["index"] for r in answer.json()["results"]]
            except httpx.HTTPError as err:
                print(f"request {i}: {type(err).__name__}: {err}", flush=True)
            latencies[i] = time.perf_counter() - begun

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        await http.post(f"{url}/v1/rerank", json={"query": requests[0][0],
                                                  "documents": requests[0][1]})  # warm up
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return Run(time.perf_counter() - started, latencies, orders)


def bm25_requests(data: str | None, count: int, depth: int) -> list[tuple[str, list[str]]]:
    """``count`` val questions (spread over the retrieval datasets), each with its BM25 top
    ``depth`` passages."""
    from invar_rag_integrations.data import passage_text
    from invar_rag_integrations.evaluation import odqa_corpus, odqa_questions
    from invar_rag_integrations.evaluation.datasets import RETRIEVAL_DATASETS
    from invar_rag_integrations.evaluation.qa_eval import sample_per_dataset
    from invar_rag_integrations.training.catalog import make_retriever

    passages = odqa_corpus(data)
    questions = sample_per_dataset(odqa_questions("val", RETRIEVAL_DATASETS, data=data),
                                   -(-count // len(RETRIEVAL_DATASETS)), seed=0)[:count]
    bm25 = make_retriever("bm25", data)
    bm25.index(passages)
    by_id = {p.id: p for p in passages}
    texts = [q.question for q in questions]
    return [(q, [passage_text(by_id[i]) for i in found.ids])
            for q, found in zip(texts, bm25.search(texts, depth))]


def main(argv: list[str] | None = None) -> None:
    from invar_rag_integrations.invar.artifacts import load_reranker
    from invar_rag_integrations.rerank_service import RerankServer, ServiceSettings

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--system", default=str(SHIPPED_SYSTEM), help="system directory")
    parser.add_argument("--data-dir", help="folder with odqa/ (default: $INVAR_RAG_DATA or "
                                           "../shared/data)")
    parser.add_argument("--requests", type=int, default=32, help="requests per run")
    parser.add_argument("--documents", type=int, default=10, help="documents per request")
    parser.add_argument("--no-vllm", action="store_true",
                        help="leave out the server scoring through a vLLM engine (run when "
                             "vLLM is installed)")
    args = parser.parse_args(argv)

    requests = bm25_requests(args.data_dir, args.requests, args.documents)
    reranker, _ = load_reranker(args.system)
    inprocess = in_process(reranker, requests)
    rows = run_rows("rerank-inprocess", inprocess, args.documents, None)
    print(f"in-process: {rows[0]['value']:.2f} pairs/s", flush=True)
    del reranker  # the server process scores from here on
    servers = [("", {}), ("-nobatch", {"settings": ServiceSettings(max_batch_pairs=1)})]
    if not args.no_vllm and importlib.util.find_spec("vllm") is not None:
        servers.append(("-vllm", {"scorer_engine": "vllm"}))
    for suffix, options in servers:
        with RerankServer(args.system, port=PORT, log="runs/bench-rerank-server.log",
                          **options) as server:
            for clients in CLIENTS:
                run = asyncio.run(load(server.root_url, requests, clients))
                found = run_rows(f"rerank-server-c{clients}{suffix}", run, args.documents,
                                 inprocess)
                rows += found
                print(", ".join(f"{r['system']} {r['metric']} {r['value']:.2f}" for r in found),
                      flush=True)
    save_and_render("rerank_service", rows, "benchmarks.rerank_service", argv)


if __name__ == "__main__":
    main()
