"""A scripted, TGI-compatible HTTP server on loopback, for tests and benchmarks.

Serves what NanoFlux uses from TGI (stdlib only, one thread per connection):
- `POST /v1/chat/completions` in the OpenAI chat-completions shape, as TGI answers it;
- `GET /health` (200, empty body) and `GET /info` (minimal TGI-style JSON); `GET /v1/models`.

`kind` makes it look like another server to NanoFlux's detection and validates `response_format` as that server does:
`tgi` (default: /info; the grammar `{"type": "json"|"json_object"|"json_schema", "value": ...}`, else 422),
`vllm` (/version, /v1/models `owned_by: "vllm"`; OpenAI's text/json_object/json_schema, else 400), `llama_cpp`
(llama-cpp-python: /v1/models `owned_by: "me"`, FastAPI 404s; text/json_object only, else HTTP 500 with the pydantic
message, as the real one answers), `openai` (a generic OpenAI-compatible server: /v1/models only, nothing validated).

Behaviour is scripted:
- `responder(request_json) -> str | Reply` decides each normal answer (default: a deterministic echo);
- `server.script(Fault.status(429, retry_after=1), Fault.truncated(), ...)` queues faults, consumed one per
  chat request in order; a request with no fault left is answered normally;
- `fault_for(request_json) -> Fault | None` picks a fault by content, when no scripted fault is queued;
- `latency` (seconds per chat request), `token_latency` (seconds per completion token, added to `latency` for
  each normal answer) and `capacity` (requests processed at once; the rest wait, as on a real TGI) shape
  throughput for concurrency tests and benchmarks. `service_seconds` sums the time requests held a capacity slot
  as scripted (latency + tokens x token_latency): divided by `capacity`, it is the shortest wall time in which
  the server could have answered them, the bound a benchmark compares a client against.
- `queue_limit`: with `capacity`, how many requests may wait for a slot; past `capacity + queue_limit` in progress,
  a request gets 429 "Model is overloaded" at once (TGI's `max_concurrent_requests`). `rejected` counts them.

Every request is recorded (`server.requests`, `server.chat_requests`), including the Authorization header
so tests can check a token was sent. Usage:

    with ScriptedTGI(responder=lambda body: "hi") as server:
        client = EndpointClient(name="t", base_url=server.url)

Under HF_HUB_OFFLINE=1 huggingface_hub refuses even loopback URLs: use `with loopback_reachable():` (the tests'
`allow_loopback_offline` and `tgi_server` fixtures do).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from localhub.serving import LoopbackHTTPServer, ServerThread

__all__ = [
    "LOOPBACK_HOSTS",
    "SERVER_KINDS",
    "Fault",
    "RecordedRequest",
    "Reply",
    "ScriptedTGI",
    "echo_responder",
    "loopback_reachable",
]


@dataclass(frozen=True)
class Reply:
    """A normal answer with explicit accounting; a responder may return this instead of a plain string."""

    content: str
    finish_reason: str = "stop"
    prompt_tokens: int | None = None  # None: counted as whitespace-separated words
    completion_tokens: int | None = None


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour, applied to one chat request. Build with the class methods."""

    kind: str
    status_code: int = 200
    retry_after: int | float | str | None = None
    seconds: float = 0.0
    premature_close: bool = False
    message: str | None = None

    @classmethod
    def status(cls, code: int, *, retry_after: int | float | str | None = None, message: str | None = None) -> Fault:
        """Answer `code` with a TGI-style `{"error": ..., "error_type": ...}` body; optional Retry-After header."""
        return cls("status", status_code=code, retry_after=retry_after, message=message)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Wait `seconds` (e.g. past the client timeout), then answer normally if anyone still listens."""
        return cls("delay", seconds=seconds)

    @classmethod
    def truncated(cls, *, premature_close: bool = False) -> Fault:
        """200 with a cut-off JSON body. premature_close: declare the full length, send half, drop the connection."""
        return cls("truncated", premature_close=premature_close)

    @classmethod
    def invalid_json(cls) -> Fault:
        """200 with a body that is not JSON at all (as a misconfigured proxy would send)."""
        return cls("invalid_json")

    @classmethod
    def disconnect(cls) -> Fault:
        """Close the connection without answering."""
        return cls("disconnect")

    @classmethod
    def ok(cls) -> Fault:
        """Answer normally (a placeholder to interleave with faults)."""
        return cls("ok")


@dataclass
class RecordedRequest:
    """What the server received. `headers` leaves Authorization out; it is kept in `authorization`."""

    method: str
    path: str
    headers: dict[str, str]
    authorization: str | None
    json: Any  # None when the body was absent or not JSON
    raw: bytes
    fault: Fault | None = None
    received_at: float = field(default_factory=time.monotonic)


_ERROR_TYPES = {400: "validation", 422: "validation", 424: "generation", 429: "overloaded", 503: "overloaded"}


def echo_responder(body: dict[str, Any]) -> str:
    """Default answer: the last user message, echoed."""
    messages = body.get("messages") or []
    last_user = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    return f"echo: {last_user}"


def _word_count(value: Any) -> int:
    return len(str(value).split())


class ScriptedTGI:
    """The server. Thread-safe; start/stop with `with` or `start()` / `close()`."""

    def __init__(
        self,
        responder: Callable[[dict[str, Any]], str | Reply] | None = None,
        *,
        fault_for: Callable[[dict[str, Any]], Fault | None] | None = None,
        faults: list[Fault] | tuple[Fault, ...] = (),
        latency: float = 0.0,
        token_latency: float = 0.0,
        capacity: int | None = None,
        queue_limit: int | None = None,
        kind: str = "tgi",
        model_id: str = "scripted/tgi",
        host: str = "127.0.0.1",
    ):
        if kind not in SERVER_KINDS:
            raise ValueError(f"kind must be one of {SERVER_KINDS}, got {kind!r}")
        if queue_limit is not None and not capacity:
            raise ValueError("queue_limit needs a capacity")
        self.responder = responder or echo_responder
        # Content-keyed faults (e.g. "this question always gets a 503"), used when no scripted fault is queued.
        self.fault_for = fault_for
        self.latency = latency
        self.token_latency = token_latency
        self.capacity = capacity
        self.queue_limit = queue_limit
        self.kind = kind
        self.model_id = model_id
        self._host = host
        self._lock = threading.Lock()
        self._faults: deque[Fault] = deque(faults)
        self._capacity_gate = threading.BoundedSemaphore(capacity) if capacity else None
        self._stopping = threading.Event()
        self._requests: list[RecordedRequest] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._rejected = 0
        self._service_seconds = 0.0
        self._completion_tokens = 0
        self._serving: ServerThread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> ScriptedTGI:
        self._serving = ServerThread(LoopbackHTTPServer((self._host, 0), _make_handler(self)), name="scripted-tgi")
        return self

    def close(self) -> None:
        serving, self._serving = self._serving, None
        if serving is None:
            return
        self._stopping.set()  # wakes handlers sleeping in Fault.delay / latency
        serving.stop()

    def __enter__(self) -> ScriptedTGI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """Base URL, e.g. "http://127.0.0.1:54321"."""
        if self._serving is None:
            raise RuntimeError("server not started")
        return self._serving.url

    # -- scripting and inspection --------------------------------------------------------------------

    def script(self, *faults: Fault) -> None:
        """Queue faults; each chat request consumes the next one."""
        with self._lock:
            self._faults.extend(faults)

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received (all paths), in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.startswith("/v1/chat/completions")]

    @property
    def request_count(self) -> int:
        """Chat requests received."""
        return len(self.chat_requests)

    @property
    def max_concurrent(self) -> int:
        """Most chat requests in progress at the same moment (queued behind `capacity` included)."""
        with self._lock:
            return self._max_in_flight

    @property
    def rejected(self) -> int:
        """Chat requests answered 429 because `capacity + queue_limit` were in progress."""
        with self._lock:
            return self._rejected

    @property
    def service_seconds(self) -> float:
        """Scripted service time of every chat request so far: latency, plus tokens x token_latency when answered."""
        with self._lock:
            return self._service_seconds

    @property
    def completion_tokens(self) -> int:
        """Completion tokens of every normal answer so far (what `token_latency` was charged on)."""
        with self._lock:
            return self._completion_tokens

    def reset(self) -> None:
        """Forget recorded requests, peak concurrency, service time and queued faults."""
        with self._lock:
            self._requests.clear()
            self._faults.clear()
            self._max_in_flight = self._in_flight
            self._rejected = 0
            self._service_seconds = 0.0
            self._completion_tokens = 0

    # -- internals used by the handler ---------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _enter(self) -> bool:
        """Admit a chat request; False when `capacity + queue_limit` are already in progress (answer 429)."""
        with self._lock:
            if self.queue_limit is not None and self.capacity and self._in_flight >= self.capacity + self.queue_limit:
                self._rejected += 1
                return False
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            return True

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _serve(self, seconds: float, completion_tokens: int = 0) -> None:
        """Hold the capacity slot for `seconds` of scripted service time, and account for it."""
        with self._lock:
            self._service_seconds += seconds
            self._completion_tokens += completion_tokens
        self._wait(seconds)

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        answer = self.responder(body)
        reply = answer if isinstance(answer, Reply) else Reply(content=str(answer))
        messages = body.get("messages") or []
        prompt_tokens = (
            reply.prompt_tokens
            if reply.prompt_tokens is not None
            else sum(_word_count(m.get("content", "")) for m in messages if isinstance(m, dict))
        )
        completion_tokens = (
            reply.completion_tokens if reply.completion_tokens is not None else _word_count(reply.content)
        )
        return {
            "id": "",  # TGI leaves it empty
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_id,
            "system_fingerprint": "scripted-tgi",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.content},
                    "logprobs": None,
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _format_error(self, body: dict[str, Any]) -> tuple[int, Any] | None:
        """The error this server kind answers to a `response_format` it cannot read; None when it reads it."""
        fmt = body.get("response_format")
        if fmt is None or self.kind == "openai":
            return None
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if self.kind == "tgi" and (kind not in ("json", "json_object", "json_schema", "regex") or "value" not in fmt):
            message = (
                "Failed to deserialize the JSON body into the target type: response_format: missing field `value`"
            )
            return 422, {"error": message, "error_type": "validation"}
        if self.kind == "vllm" and kind not in ("text", "json_object", "json_schema", "structural_tag"):
            message = (
                "1 validation error for ChatCompletionRequest\nresponse_format.type\n  Input should be 'text',"
                f" 'json_object', 'json_schema' or 'structural_tag' [type=literal_error, input_value={kind!r}]"
            )
            return 400, {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": 400}
        if self.kind == "llama_cpp" and kind not in ("text", "json_object"):
            message = (
                "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), 'msg': "
                f"\"Input should be 'text' or 'json_object'\", 'input': {kind!r}}}\n\n  File \"app.py\", line 376"
            )
            return 500, {"error": {"message": message, "type": "internal_server_error", "param": None, "code": None}}
        return None

    def _get(self, path: str) -> tuple[int, Any]:
        """Status and JSON body of a GET route, as this server kind answers it."""
        models = {"object": "list", "data": [{"id": self.model_id, "object": "model", "owned_by": OWNERS[self.kind]}]}
        routes: dict[str, Any] = {"/v1/models": models}
        if self.kind == "tgi":
            routes["/info"] = self._info()
        elif self.kind == "vllm":
            routes["/version"] = {"version": "0.0.0-scripted"}
        if path in routes:
            return 200, routes[path]
        if self.kind == "llama_cpp":
            return 404, {"detail": "Not Found"}
        return 404, {"error": f"no route for GET {path}", "error_type": "not_found"}

    def _info(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "model_sha": None,
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": self.capacity or 128,
            "max_input_tokens": 4095,
            "max_total_tokens": 4096,
            "router": "text-generation-router",
            "version": "scripted",
        }


SERVER_KINDS = ("tgi", "vllm", "llama_cpp", "openai")
OWNERS = {"tgi": "scripted/tgi", "vllm": "vllm", "llama_cpp": "me", "openai": "system"}


def _make_handler(server: ScriptedTGI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like TGI: the client reuses connections
        # TCP_NODELAY: headers and body go out as two writes, and with Nagle's algorithm the body would wait for the
        # client's delayed ACK of the headers, ~40 ms on Linux, on every response (asyncio servers set it by default).
        disable_nagle_algorithm = True

        def finish(self) -> None:
            try:
                super().finish()
            except OSError:
                pass

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
            pass

        def _read_body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _record(self, raw: bytes, fault: Fault | None = None) -> RecordedRequest:
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = None
            headers = {k.lower(): v for k, v in self.headers.items() if k.lower() != "authorization"}
            request = RecordedRequest(
                method=self.command,
                path=self.path,
                headers=headers,
                authorization=self.headers.get("Authorization"),
                json=parsed,
                raw=raw,
                fault=fault,
            )
            server._record(request)
            return request

        def _send(
            self,
            status: int,
            body: bytes,
            *,
            content_type: str = "application/json",
            headers: dict[str, str] | None = None,
            declared_length: int | None = None,
        ) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body) if declared_length is None else declared_length))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
            except OSError:  # the client gave up (timeout) and closed the socket
                self.close_connection = True

        def _send_json(self, status: int, payload: Any, **kwargs: Any) -> None:
            self._send(status, json.dumps(payload).encode(), **kwargs)

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            self._record(b"")
            if self.path == "/health" and server.kind == "tgi":
                self._send(200, b"", content_type="text/plain")
            else:
                self._send_json(*server._get(self.path.split("?", 1)[0]))

        def do_POST(self) -> None:  # noqa: N802
            raw = self._read_body()
            if not self.path.startswith("/v1/chat/completions"):
                self._record(raw)
                self._send_json(404, {"error": f"no route for POST {self.path}", "error_type": "not_found"})
                return
            fault = server._next_fault()
            if fault is None and server.fault_for is not None:
                try:
                    fault = server.fault_for(json.loads(raw))
                except ValueError:
                    fault = None
            request = self._record(raw, fault)
            if not server._enter():
                self._send_json(429, {"error": "Model is overloaded", "error_type": "overloaded"})
                return
            try:
                if server._capacity_gate is not None:
                    server._capacity_gate.acquire()
                try:
                    server._serve(server.latency)
                    self._answer(request, fault)
                finally:
                    if server._capacity_gate is not None:
                        server._capacity_gate.release()
            finally:
                server._leave()

        def _answer(self, request: RecordedRequest, fault: Fault | None) -> None:
            body = request.json
            kind = fault.kind if fault else "ok"
            if kind == "status":
                assert fault is not None
                headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
                message = fault.message or f"scripted error {fault.status_code}"
                error = {"error": message, "error_type": _ERROR_TYPES.get(fault.status_code, "scripted")}
                self._send_json(fault.status_code, error, headers=headers)
                return
            if kind == "disconnect":
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            if kind == "invalid_json":
                self._send(200, b"<html><body>502 Bad Gateway</body></html>")
                return
            if not isinstance(body, dict):
                self._send_json(422, {"error": "Failed to deserialize the JSON body", "error_type": "validation"})
                return
            rejected = server._format_error(body)
            if rejected is not None:
                self._send_json(*rejected)
                return
            if kind == "delay":
                assert fault is not None
                server._wait(fault.seconds)
                if server._stopping.is_set():
                    self.close_connection = True
                    return
            completion = server._completion(body)
            tokens = completion["usage"]["completion_tokens"]
            server._serve(server.token_latency * tokens, tokens)  # generation time grows with the answer
            payload = json.dumps(completion).encode()
            if kind == "truncated":
                assert fault is not None
                cut = payload[: len(payload) // 2]
                if fault.premature_close:
                    self.close_connection = True
                    self._send(200, cut, declared_length=len(payload))
                else:
                    self._send(200, cut)
                return
            self._send(200, payload)

    return Handler


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@contextlib.contextmanager
def loopback_reachable() -> Iterator[None]:
    """Let huggingface_hub reach loopback servers while HF_HUB_OFFLINE=1 (for benchmarks run outside pytest too).

    huggingface_hub 2.x enforces offline mode in the request hook of every httpx2 client it builds, so
    AsyncInferenceClient refuses even http://127.0.0.1. This swaps that hook for one that lets loopback
    through and still refuses everything else, and puts the original back on exit. The hook is looked up when
    a client is created.
    """
    from huggingface_hub.utils import _http

    original = _http.async_hf_request_event_hook

    async def hook(request: Any) -> Any:
        if request.url.host in LOOPBACK_HOSTS:
            return None
        return await original(request)

    _http.async_hf_request_event_hook = hook
    try:
        yield
    finally:
        _http.async_hf_request_event_hook = original
