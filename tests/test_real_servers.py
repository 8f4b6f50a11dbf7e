"""EndpointClient against a REAL llama.cpp server: llama-cpp-python's `python -m llama_cpp.server` serving the packaged
SmolLM2-135M GGUF on loopback (no download). What the scripted server imitates, checked against the real thing:
`auto` detects it, the schema is honoured, the shapes it cannot read fail at once with its own words and the fix.

Slow (a real model on CPU): a session-scoped server, few requests, small max_tokens. Needs the server's extras
(`llama-cpp-python[server]`: fastapi, uvicorn, sse-starlette, starlette-context, pydantic-settings).
"""

from __future__ import annotations

import asyncio
import importlib.resources
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import httpx2
import pytest

from builder.chat import ChatRequest, EndpointError
from builder.embedded import DEFAULT_MODEL_ID, PACKAGED_MODELS
from builder.roles import Rejected, attack_schema, parse_attack
from builder.transport import EndpointClient, RetryPolicy

pytestmark = pytest.mark.slow

SERVER_EXTRAS = ("fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings")
ATTACK_SCHEMA = attack_schema("choice", 4)
ATTACK_PROMPT = (
    "Write one difficult multiple-choice question about pharmacology for medical students, with exactly 4 answer "
    "options. Reply with a JSON object with the keys question, options (a list of 4 option texts), explanation "
    "(one short sentence) and reference_answer (the letter A, B, C or D of the correct option)."
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server() -> Iterator[str]:
    """`python -m llama_cpp.server` with the packaged GGUF on a free loopback port; its URL. Killed at the end."""
    missing = [name for name in SERVER_EXTRAS if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"llama_cpp.server needs {', '.join(missing)}: pip install 'llama-cpp-python[server]'")
    spec = PACKAGED_MODELS[DEFAULT_MODEL_ID]
    gguf = importlib.resources.files(spec.package) / spec.gguf_file
    port = _free_port()
    log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)  # noqa: SIM115
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {process.returncode}: {open(log.name).read()[-2000:]}")
            try:
                if httpx2.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not ready after 180 s: {open(log.name).read()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        os.unlink(log.name)


def _client(url: str, mode: str = "auto") -> EndpointClient:
    return EndpointClient(name="player_a", base_url=url, structured_output=mode, retry=RetryPolicy(max_attempts=3, backoff_base=0.1, timeout=300))


def _attack(seed: int, max_tokens: int = 256) -> ChatRequest:
    messages = [{"role": "user", "content": ATTACK_PROMPT}]
    return ChatRequest(messages=messages, max_tokens=max_tokens, temperature=0.7, seed=seed, json_schema=ATTACK_SCHEMA, role="player_a")


async def _attacks(client: EndpointClient, n: int) -> list[str]:
    async with client:
        return [(await client.chat(_attack(1000 + i))).text for i in range(n)]


def test_auto_detects_llama_cpp_and_the_attack_schema_is_honoured(llama_server):
    client = _client(llama_server)
    texts = asyncio.run(_attacks(client, 10))

    assert (client.server.server, client.structured_output_mode) == ("llama-cpp-python", "llama_cpp")
    parsed = [parse_attack(text, "choice", 4) for text in texts]
    rate = sum(not isinstance(p, Rejected) for p in parsed) / len(parsed)
    assert rate >= 0.9, [p.reason for p in parsed if isinstance(p, Rejected)]
    assert client.stats.attempts == 10 and client.stats.completion_tokens > 0 and client.stats.answers_without_usage == 0


@pytest.mark.parametrize("mode", ["tgi", "openai"])
def test_a_shape_llama_cpp_cannot_read_fails_once_with_its_words_and_the_fix(llama_server, mode):
    # Measured: llama-cpp-python validates response_format.type against 'text' | 'json_object' and answers HTTP 500.
    client = _client(llama_server, mode)
    with pytest.raises(EndpointError) as excinfo:
        asyncio.run(_attacks(client, 1))
    err = excinfo.value
    assert err.status == 500 and err.attempts == 1 and client.stats.attempts == 1  # not retried
    assert "Input should be 'text' or 'json_object'" in err.server_message
    assert err.role == "player_a" and err.endpoint == llama_server
    assert "Fix: set structured_output: auto" in str(err)


def test_without_a_response_format_the_answers_are_still_usable_text(llama_server):
    # `none` sends no response_format: the server answers (HTTP 200), and only the prompt asks for the keys.
    client = _client(llama_server, "none")
    texts = asyncio.run(_attacks(client, 2))
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)
    assert client.structured_output_mode == "none" and client.stats.failures == 0
