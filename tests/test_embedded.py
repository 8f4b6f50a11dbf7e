"""The embedded default: the packaged GGUF served by a managed llama.cpp server (builder/llama_engine.py), reached
through the same EndpointClient as any endpoint; and the GGUF -> plain HF cache the trainer uses (nanoflux/models.py).

The `slow` tests start the real `llama_cpp.server` on the packaged SmolLM2-135M (one per test session, shared) or
convert the GGUF (once per session, into the session's NANOFLUX_CACHE).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder import build, llama_engine
from builder.config import build_config
from builder.llama_engine import EngineError, EngineSettings, LlamaServer, engine_client, engine_for
from nanoflux import models as embedded
from nanoflux.chat import ChatRequest
from nanoflux.models import DEFAULT_MODEL_ID, embedded_model_path
from nanoflux.transport import EndpointClient

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "score": {"type": "integer", "minimum": 1, "maximum": 5}},
    "required": ["answer", "score"],
}


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def running(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan reparented to a PID 1 that does not reap stays a zombie)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not running(pid)


class _Scripted(LlamaServer):
    """A managed server whose process is a short Python script (the start/stop machinery without llama.cpp)."""

    def __init__(self, script: str, tmp_path: Path, **settings):
        super().__init__("scripted", Path(__file__), EngineSettings(**settings), log_dir=tmp_path)
        self.script = script

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-c", self.script]


# --- fast: no model --------------------------------------------------------------------------------


def test_unknown_model_id_is_refused_with_a_helpful_message_and_nothing_starts(tmp_path):
    with pytest.raises(ValueError) as err:
        embedded_model_path("Qwen/Qwen2.5-0.5B-Instruct", cache_dir=tmp_path)
    message = str(err.value)
    assert "Qwen/Qwen2.5-0.5B-Instruct" in message and DEFAULT_MODEL_ID in message and "base_url" in message
    assert not any(tmp_path.iterdir())  # nothing converted, nothing written

    before = dict(llama_engine._ENGINES)
    with pytest.raises(ValueError, match="base_url"):
        engine_client("player_a", "meta-llama/Llama-3.1-8B-Instruct")
    assert llama_engine._ENGINES == before  # refused before any server was made


def test_the_embedded_branch_builds_an_endpoint_client_to_the_managed_server(monkeypatch):
    started = []

    def fake_start(self):
        self.port = 40123
        started.append(self)
        return self

    monkeypatch.setattr(llama_engine, "_ENGINES", {})
    monkeypatch.setattr(LlamaServer, "start", fake_start)
    config = build_config("configs/local.yaml", [])
    clients = build.make_clients(config)

    client = clients["player_a"]
    assert clients["player_b"] is client and clients["judge"] is client  # one model: one client, one server
    assert len(started) == 1 and isinstance(client, EndpointClient)
    assert client.base_url == "http://127.0.0.1:40123" and client.engine is started[0]
    assert client.model == DEFAULT_MODEL_ID and client.structured_output == "llama_cpp"  # known: nothing to detect
    assert client.max_concurrency == llama_engine.SLOTS  # the server answers one request at a time
    assert engine_for() is started[0]  # shared by every later caller in the process


def test_the_server_command_is_llama_cpp_server_sized_for_this_machine(tmp_path):
    server = LlamaServer(DEFAULT_MODEL_ID, embedded.gguf_path(), log_dir=tmp_path)
    command = server.command(8123)
    assert command[:3] == [sys.executable, "-m", "builder.llama_engine"]
    args = dict(zip(command[3::2], command[4::2], strict=True))
    assert args["--model"] == str(embedded.gguf_path()) and args["--model_alias"] == DEFAULT_MODEL_ID
    assert (args["--host"], args["--port"]) == ("127.0.0.1", "8123")
    threads = str(server.settings.threads())
    assert args["--n_threads"] == args["--n_threads_batch"] == threads
    assert int(args["--n_ctx"]) == 8192 and int(args["--n_batch"]) == 512
    assert server.log_path.parent == tmp_path  # the server's output goes to a file, not the console


def test_a_server_that_dies_while_starting_is_a_clear_error_with_its_log_tail(tmp_path):
    server = _Scripted(
        "import sys; print('error loading model: tensor data is not within the file bounds'); sys.exit(3)", tmp_path
    )
    with pytest.raises(EngineError) as err:
        server.start()
    message = str(err.value)
    assert "exited with code 3 while starting" in message and "tensor data is not within the file bounds" in message
    assert str(server.log_path) in message and server.process is None and not server.alive


def test_a_server_that_is_not_ready_in_time_is_stopped_and_reported(tmp_path):
    server = _Scripted(
        "import os, time; print('loading', os.getpid(), flush=True); time.sleep(120)", tmp_path, startup_timeout=1.0
    )
    with pytest.raises(EngineError, match=r"did not answer within 1 s.*loading") as err:
        server.start()
    pid = int(server.log_tail().split("loading ")[1].split()[0])
    assert _wait_gone(pid, 15), "the server that was not ready was left running"
    assert err.value.kind == "engine"


def test_a_failed_conversion_leaves_no_cache_behind(tmp_path, monkeypatch):
    def crash(gguf, model_id, info, out):
        (out / "model.safetensors").write_bytes(b"half a file")
        raise RuntimeError("power cut")

    monkeypatch.setattr(embedded, "_convert", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        embedded_model_path(cache_dir=tmp_path)
    models = tmp_path / "models"
    assert list(models.iterdir()) == []  # neither the target nor a temp dir


def test_env_var_sets_the_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path))
    assert embedded.cache_root() == tmp_path
    monkeypatch.delenv(embedded.CACHE_ENV)
    assert embedded.cache_root() == embedded.Path(os.path.expanduser("~")) / ".cache" / "nanoflux"


# --- slow: the real llama.cpp server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def client():
    return engine_client("player_a", timeout=300)


@pytest.mark.slow
def test_the_server_is_started_once_and_shared(client):
    other = engine_client("judge")
    assert other.engine is client.engine is engine_for() and other.base_url == client.base_url
    assert client.engine.alive and client.base_url.startswith("http://127.0.0.1:")
    assert "nanoflux engine: pid" in client.engine.log_tail(10**6)


@pytest.mark.slow
def test_json_schema_is_honoured_and_tokens_are_counted(client):
    request = ChatRequest(
        messages=_user('Is water wet? Reply in JSON with a short "answer" and a "score" from 1 to 5.'),
        max_tokens=96,
        temperature=0,
        json_schema=SCHEMA,
        role="judge",
    )

    async def ask():
        async with client:
            return await client.chat(request)

    response = asyncio.run(ask())
    assert response.finish_reason == "stop", response.text
    data = json.loads(response.text)
    assert isinstance(data["answer"], str) and isinstance(data["score"], int)
    assert response.prompt_tokens > 10 and 0 < response.completion_tokens <= 96
    assert client.structured_output_mode == "llama_cpp" and client.stats.attempts_by_role["judge"] >= 1


@pytest.mark.slow
def test_greedy_and_seeded_sampling_are_reproducible(client):
    # llama.cpp reuses the KV cache of the previous request's common prefix; evaluating the prompt's last token alone
    # instead of in one batch changes the logits in the last bits, so a sampled answer can differ right after the very
    # same prompt. Builds never send a prompt twice in a row: here, as there, another request comes in between.
    other = ChatRequest(messages=_user("Say something about dogs."), max_tokens=8, temperature=0)

    async def twice(request):
        async with client:
            answers = []
            for _ in range(2):
                await client.chat(other)
                answers.append(await client.chat(request))
            return answers

    greedy = asyncio.run(twice(ChatRequest(messages=_user("Name a color."), max_tokens=16, temperature=0)))
    assert greedy[0].text == greedy[1].text and greedy[0].text
    sampled = asyncio.run(
        twice(ChatRequest(messages=_user("Name a color."), max_tokens=16, temperature=1.0, top_p=0.9, seed=7))
    )
    assert sampled[0].text == sampled[1].text
    other_seed = asyncio.run(
        twice(ChatRequest(messages=_user("Name a color."), max_tokens=16, temperature=1.0, top_p=0.9, seed=8))
    )
    assert other_seed[0].text == other_seed[1].text


@pytest.mark.slow
def test_a_server_that_died_is_reported_with_its_exit_and_log(tmp_path):
    server = LlamaServer(DEFAULT_MODEL_ID, embedded.gguf_path(), EngineSettings(n_ctx=1024), log_dir=tmp_path).start()
    try:
        dead = llama_engine.EngineClient(
            server, name="player_a", model=DEFAULT_MODEL_ID, structured_output="llama_cpp"
        )
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)
        started = time.monotonic()
        with pytest.raises(EngineError) as err:
            asyncio.run(dead.chat(ChatRequest(messages=_user("hi"), max_tokens=8)))
        assert time.monotonic() - started < 5  # no retries against a process that is gone
        assert "exited with code -9" in str(err.value) and str(server.log_path) in str(err.value)
        assert "nanoflux engine: pid" in str(err.value) or "llama" in str(err.value)  # the log's tail
    finally:
        server.stop()


@pytest.mark.slow
def test_stop_ends_the_server_and_a_killed_parent_leaves_no_orphan(tmp_path):
    server = LlamaServer(DEFAULT_MODEL_ID, embedded.gguf_path(), EngineSettings(n_ctx=1024), log_dir=tmp_path).start()
    pid = server.process.pid
    server.stop()
    assert _wait_gone(pid, 5) and not server.alive

    # A NanoFlux process killed with SIGKILL runs no atexit: the server sees its stdin pipe close and exits.
    script = (
        "import time; from builder.llama_engine import engine_for; print(engine_for().process.pid, flush=True);"
        " time.sleep(300)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "NANOFLUX_CACHE": str(tmp_path)},
    )
    try:
        child = int(parent.stdout.readline())
        assert running(child)
        parent.kill()
        parent.wait()
        assert _wait_gone(child, 15), "the managed server outlived its killed parent"
    finally:
        parent.kill()


@pytest.mark.slow
def test_cache_is_a_plain_trainable_model(embedded_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = embedded_model_dir
    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert (model_dir / "model.safetensors").is_file()
    assert [p.name for p in model_dir.parent.iterdir()] == [model_dir.name]  # no temp dirs left

    t0 = time.perf_counter()
    assert embedded_model_path() == model_dir  # second call: cache hit, no reconversion
    assert time.perf_counter() - t0 < 5

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert getattr(model, "hf_quantizer", None) is None
    assert not getattr(model, "is_quantized", False)
    assert model.dtype == torch.float32
    params = list(model.parameters())
    assert params and all(p.requires_grad for p in params)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = tokenizer.apply_chat_template(_user("hi"), tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")

    batch = tokenizer("The capital of France is Paris.", return_tensors="pt")
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert model.model.embed_tokens.weight.grad is not None

    model.save_pretrained(tmp_path / "copy")
    assert (tmp_path / "copy" / "model.safetensors").is_file()


def test_a_missing_extra_names_the_pip_command():
    from nanoflux.extras import MissingExtraError, hint_for, require_extra

    with pytest.raises(
        MissingExtraError, match=r"no_such_module_xyz is not installed\. Fix: pip install 'nanoflux\[train\]'"
    ):
        require_extra("train", "no_such_module_xyz")
    require_extra("train", "json")  # installed: nothing raised
    assert "pip install 'nanoflux[train]'" in hint_for(ModuleNotFoundError("No module named 'peft'", name="peft"))
    assert "nanoflux[space]" in hint_for(ModuleNotFoundError(name="gradio.blocks"))
    assert hint_for(ModuleNotFoundError(name="something_else")) is None


def test_the_engine_uses_the_idle_cpus(monkeypatch):
    monkeypatch.setattr(llama_engine, "cpu_count", lambda: 4)
    for busy, threads in ((0.2, 4), (1.3, 3), (2.6, 1), (40.0, 1)):
        monkeypatch.setattr(llama_engine, "busy_cpus", lambda busy=busy: busy)
        assert EngineSettings().threads() == threads
    assert EngineSettings(n_threads=2).threads() == 2


def test_busy_cpus_reads_what_is_busy_now():
    import threading

    assert 0.0 <= llama_engine.busy_cpus() <= (os.cpu_count() or 1)
    stop = threading.Event()
    spinner = threading.Thread(target=lambda: [None for _ in iter(stop.is_set, True)], daemon=True)
    spinner.start()  # one thread spinning keeps about one CPU busy
    try:
        assert llama_engine.busy_cpus(window=0.5) >= 0.5
    finally:
        stop.set()
        spinner.join()
