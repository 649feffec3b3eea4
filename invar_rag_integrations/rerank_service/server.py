"""``invar-rag serve SYSTEM --rerank``: the rerank service under uvicorn, in the foreground
(:func:`serve_rerank`) or as a managed child process (:class:`RerankServer`, for tests,
benchmarks and notebooks)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..serving import DEFAULT_HOST, ServerProcess, port_in_use
from .settings import API_KEY_VARIABLE, SCORER_ENGINES, ServiceSettings, settings_flags

DEFAULT_RERANK_PORT = 8001  # beside the generation server's 8000
DRAIN_TIMEOUT_S = 60.0


def check_scorer_engine(scorer_engine: str, engine_args: Sequence[str],
                        settings: ServiceSettings) -> None:
    """Fail, before anything loads, on an engine choice that cannot work."""
    if scorer_engine not in SCORER_ENGINES:
        raise ValueError(f"scorer_engine must be one of {SCORER_ENGINES}, got {scorer_engine!r}")
    if engine_args and scorer_engine != "vllm":
        raise ValueError("vLLM flags (after --) with --rerank need --scorer-engine vllm")
    if scorer_engine == "vllm" and settings.passage_cache_mb:
        raise ValueError("--passage-cache-mb keeps passage states for the HF scorer; with "
                         "--scorer-engine vllm, vLLM's prefix cache keeps them")


def serve_rerank(system_dir: str | os.PathLike[str], host: str = DEFAULT_HOST,
                 port: int = DEFAULT_RERANK_PORT, settings: ServiceSettings | None = None,
                 precision: str = "auto", drain_timeout: float = DRAIN_TIMEOUT_S,
                 scorer_engine: str = "hf", engine_args: Sequence[str] = ()) -> None:
    """Load a system's reranker and serve it until Ctrl-C or SIGTERM; both stop taking new
    connections, answer the requests in flight (up to ``drain_timeout`` seconds), then exit.

    ``scorer_engine = "vllm"`` reads query-document pairs through a vLLM engine's prompt
    log-probabilities (the GPU path; ``engine_args``: vLLM's own flags, e.g.
    ``--gpu-memory-utilization 0.4`` beside a generation server on the same GPU; ``precision``
    other than ``auto`` sets its dtype); ``hf`` reads them with the HF model in torch.
    """
    import uvicorn

    from ..invar.artifacts import load_reranker
    from . import create_app  # the serve extra, or its install hint

    settings = settings or ServiceSettings()
    check_scorer_engine(scorer_engine, engine_args, settings)
    if port_in_use(host, port):
        raise OSError(f"port {port} on {host} is already in use; choose another one (--port)")
    options: dict[str, Any] = {}
    if scorer_engine == "vllm":
        from ..generation.vllm_backend import engine_flags

        options = engine_flags(engine_args)  # bad flags fail before the model loads
        if precision != "auto":
            options.setdefault("dtype", precision)
    print(f"loading the reranker of {system_dir}", file=sys.stderr, flush=True)
    reranker, _ = load_reranker(system_dir, precision=precision)
    engine = None
    if scorer_engine == "vllm":
        from ..generation.vllm_backend import score_through_vllm

        print("starting a vLLM engine for the scorer (the first start takes a minute or two)",
              file=sys.stderr, flush=True)
        engine = score_through_vllm(reranker.scorer, system_dir, **options)
    app = create_app(reranker, settings)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=drain_timeout)
    server = uvicorn.Server(config)
    key = " (API key required)" if settings.api_key else ""
    print(f"serving rerank at http://{host}:{port} (POST /v1/rerank, /v2/rerank, /rerank; "
          f"model {settings.model_name!r}){key}; Ctrl-C stops it", flush=True)

    def stopped(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    # uvicorn drains on SIGINT / SIGTERM, then raises the signal again: a clean exit here
    previous = {sig: signal.signal(sig, stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if engine is not None:
            engine.shutdown()
        print(f"stopped after answering {app.state.batcher.counts['requests']} requests",
              file=sys.stderr, flush=True)


class RerankServer(ServerProcess):
    """``invar-rag serve SYSTEM --rerank`` as a child process in its own process group.

    Args:
        system_dir: A system directory with a retriever.
        host, port: Where it listens.
        settings: The service's settings (limits, key, batching).
        log: File its output goes to (``None``: this process's standard error).
        startup_timeout: Seconds to wait for it to become healthy.
        scorer_engine, engine_args: What reads the pairs (:func:`serve_rerank`).
    """

    kind = "rerank"

    def __init__(self, system_dir: str | os.PathLike[str], host: str = DEFAULT_HOST,
                 port: int = DEFAULT_RERANK_PORT, settings: ServiceSettings | None = None,
                 log: str | os.PathLike[str] | None = None, startup_timeout: float = 300.0,
                 scorer_engine: str = "hf", engine_args: Sequence[str] = ()):
        super().__init__(host, port, log, startup_timeout)
        self.system_dir, self.settings = system_dir, settings or ServiceSettings()
        check_scorer_engine(scorer_engine, engine_args, self.settings)
        self.scorer_engine, self.engine_args = scorer_engine, list(engine_args)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "invar_rag_integrations.cli", "serve",
                str(self.system_dir), "--rerank", "--host", self.host, "--port", str(self.port),
                "--scorer-engine", self.scorer_engine,
                *settings_flags(replace(self.settings, api_key=None)),
                *(["--", *self.engine_args] if self.engine_args else [])]

    def environment(self) -> dict[str, str]:
        key = self.settings.api_key
        return {API_KEY_VARIABLE: key} if key else {}
