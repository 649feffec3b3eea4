"""``invar-rag serve SYSTEM --rerank``: the rerank service under uvicorn, in the foreground
(:func:`serve_rerank`) or as a managed child process (:class:`RerankServer`, for tests,
benchmarks and notebooks)."""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import replace
from typing import Any

from ..serving import DEFAULT_HOST, ServerProcess, port_in_use
from .settings import API_KEY_VARIABLE, ServiceSettings, settings_flags

DEFAULT_RERANK_PORT = 8001  # beside the generation server's 8000
DRAIN_TIMEOUT_S = 60.0


def serve_rerank(system_dir: str | os.PathLike[str], host: str = DEFAULT_HOST,
                 port: int = DEFAULT_RERANK_PORT, settings: ServiceSettings | None = None,
                 precision: str = "auto", drain_timeout: float = DRAIN_TIMEOUT_S) -> None:
    """Load a system's reranker and serve it until Ctrl-C or SIGTERM; both stop taking new
    connections, answer the requests in flight (up to ``drain_timeout`` seconds), then exit."""
    import uvicorn

    from ..retrieval.artifacts import load_reranker
    from . import create_app  # the serve extra, or its install hint

    settings = settings or ServiceSettings()
    if port_in_use(host, port):
        raise OSError(f"port {port} on {host} is already in use; choose another one (--port)")
    print(f"loading the reranker of {system_dir}", file=sys.stderr, flush=True)
    reranker, _ = load_reranker(system_dir, precision=precision)
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
    """

    kind = "rerank"

    def __init__(self, system_dir: str | os.PathLike[str], host: str = DEFAULT_HOST,
                 port: int = DEFAULT_RERANK_PORT, settings: ServiceSettings | None = None,
                 log: str | os.PathLike[str] | None = None, startup_timeout: float = 300.0):
        super().__init__(host, port, log, startup_timeout)
        self.system_dir, self.settings = system_dir, settings or ServiceSettings()

    def command(self) -> list[str]:
        return [sys.executable, "-m", "invar_rag_integrations.cli", "serve",
                str(self.system_dir), "--rerank", "--host", self.host, "--port", str(self.port),
                *settings_flags(replace(self.settings, api_key=None))]

    def environment(self) -> dict[str, str]:
        key = self.settings.api_key
        return {API_KEY_VARIABLE: key} if key else {}
