"""A simulated continuous-batching LLM server (vLLM / TGI style) on loopback, for the build benchmarks.

The model (`ServerModel`), per request: `prompt_tokens` to prefill, `completion_tokens` to decode.

- `slots` sequences decode together (vLLM's `max_num_seqs`, TGI's batch): one scheduler loop steps every running
  sequence at once, one token each. A request that finds every slot taken waits in a FIFO queue; with `queue_limit`
  requests already waiting, it is answered 429 "Model is overloaded" with `Retry-After` at once (TGI's
  `max_concurrent_requests`; `queue_limit: null` queues without end, as vLLM does).
- A step takes `step_base_s + step_per_seq_s x running + prefill_per_token_s x prompt tokens admitted in it`:
  the base is reading the weights, the per-sequence term its KV cache, the prefill term the prompts of the
  sequences that joined in that step (they get their first token in it, as in vLLM). The answer goes out when its
  last token is made.

Defaults, loosely an 8B model in bf16 on one H100 under vLLM with ~1.5k-token contexts: 7 ms per step for the weights,
0.06 ms per running sequence (256 sequences: 22 ms a step, ~11k tokens/s), prefill at ~25k prompt tokens/s. `speed`
divides every time (a faster GPU, a smaller model), so a benchmark takes minutes; the client's own CPU work per
request stays the same, so a higher speed makes it harder for the client to keep up, not easier.

The bound (no client can do better): every step makes at most `slots` tokens, every token costs `step_per_seq_s` and
every prompt token `prefill_per_token_s`, so the work the server was given takes at least

    bound_s = step_base_s x ceil(completion_tokens / slots)
              + step_per_seq_s x completion_tokens + prefill_per_token_s x prompt_tokens

(over `speed`), reached when every step runs full. `ratio_to_bound = bound_s / wall_s`; `busy_s` (the steps' time)
splits it into how full the steps ran (`bound_s / busy_s`) and how much of the wall the server was working
(`busy_s / wall_s`).

Cheap in CPU: simulated time is `asyncio` sleeps in one scheduler loop (one wake-up per step, whatever the batch),
the HTTP/1.1 server is a small keep-alive `asyncio` server. Steps are timed against deadlines on the server's own
timeline, so a late wake-up (a loaded machine) is made up by the next step rather than lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from localhub.serving import base_url
from nanoflux.recipe import check_range

logger = logging.getLogger(__name__)


@dataclass
class ServerModel:
    """The simulated server's capacity and costs (see the module docstring)."""

    slots: int = 64
    """Sequences decoded together."""
    step_base_s: float = 0.007
    """Seconds per decode step whatever the batch (reading the weights)."""
    step_per_seq_s: float = 0.00006
    """Seconds per running sequence per step (its KV cache)."""
    prefill_per_token_s: float = 0.00004
    """Seconds per prompt token, charged in the step that admits the request."""
    queue_limit: int | None = None
    """Requests that may wait for a slot before 429; None: slots // 16 (at least 1). -1: no limit (vLLM)."""
    retry_after_s: float = 1.0
    """The 429's Retry-After (divided by `speed` too)."""
    speed: float = 1.0
    """Every time above is divided by this."""

    def validate(self, path: str) -> None:
        check_range(f"{path}.slots", self.slots, 1, 4096)
        check_range(f"{path}.step_base_s", self.step_base_s, 0.0, 10.0)
        check_range(f"{path}.step_per_seq_s", self.step_per_seq_s, 0.0, 1.0)
        check_range(f"{path}.prefill_per_token_s", self.prefill_per_token_s, 0.0, 1.0)
        if self.queue_limit is not None:
            check_range(f"{path}.queue_limit", self.queue_limit, -1, 1_000_000)
        check_range(f"{path}.retry_after_s", self.retry_after_s, 0.0, 3600.0)
        check_range(f"{path}.speed", self.speed, 0.0, 10_000.0, low_open=True)

    @property
    def waiting_limit(self) -> int | None:
        """Requests allowed to wait for a slot (None: no limit)."""
        if self.queue_limit is None:
            return max(1, self.slots // 16)
        return None if self.queue_limit < 0 else self.queue_limit

    def step_seconds(self, running: int, prefill_tokens: int) -> float:
        return (
            self.step_base_s + self.step_per_seq_s * running + self.prefill_per_token_s * prefill_tokens
        ) / self.speed

    def bound_seconds(self, completion_tokens: int, prompt_tokens: int) -> float:
        """The shortest time in which this server can prefill `prompt_tokens` and decode `completion_tokens`."""
        steps = math.ceil(completion_tokens / self.slots)
        return (
            self.step_base_s * steps
            + self.step_per_seq_s * completion_tokens
            + self.prefill_per_token_s * prompt_tokens
        ) / self.speed

    def max_completion_tokens_per_s(self, prompt_per_completion: float = 0.0) -> float:
        """Completion tokens/s with every step full, for a workload of `prompt_per_completion` prompt tokens per
        completion token: the server's theoretical throughput."""
        return (
            self.slots
            / (
                self.slots * self.step_per_seq_s
                + self.step_base_s
                + self.slots * prompt_per_completion * self.prefill_per_token_s
            )
            * self.speed
        )


class Overloaded(Exception):
    """The queue is full: answer 429."""


@dataclass
class _Sequence:
    prompt_tokens: int
    completion_tokens: int
    done: asyncio.Future[None]
    generated: int = 0


@dataclass
class ServerStats:
    """What the server did since it started (or `reset`)."""

    requests: int = 0
    rejected: int = 0  # 429s
    prompt_tokens: int = 0
    completion_tokens: int = 0
    steps: int = 0
    busy_s: float = 0.0  # scripted time of every step
    max_running: int = 0
    max_waiting: int = 0
    max_in_system: int = 0  # running + waiting: what a client had in flight at most
    late_s: float = 0.0  # the scheduler's worst lag behind its timeline (a loaded machine)
    requests_by_role: dict[str, int] = field(default_factory=dict)


class BatchingEngine:
    """The continuous-batching scheduler: `await generate(prompt, completion)` returns when the answer is done."""

    def __init__(self, model: ServerModel):
        self.model = model
        self.stats = ServerStats()
        self._running: list[_Sequence] = []
        self._waiting: deque[_Sequence] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._first_request_at: float | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def reset(self) -> None:
        self.stats = ServerStats()
        self._first_request_at = None

    @property
    def in_system(self) -> int:
        return len(self._running) + len(self._waiting)

    def admit(self) -> None:
        """Raise `Overloaded` (and count it) when the queue is full; call right before `generate`, with no await
        between."""
        limit = self.model.waiting_limit
        if limit is not None and len(self._waiting) - (self.model.slots - len(self._running)) >= limit:
            self.stats.rejected += 1
            raise Overloaded

    async def generate(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Queue one request and return when its last token is made."""
        free = self.model.slots - len(self._running)
        sequence = _Sequence(prompt_tokens, max(1, completion_tokens), asyncio.get_running_loop().create_future())
        self._waiting.append(sequence)
        stats = self.stats
        stats.requests += 1
        stats.prompt_tokens += prompt_tokens
        stats.completion_tokens += sequence.completion_tokens
        stats.max_in_system = max(stats.max_in_system, self.in_system)
        stats.max_waiting = max(stats.max_waiting, len(self._waiting) - max(0, free))
        self._wake.set()
        await sequence.done

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            if not self._running and not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                deadline = loop.time()  # idle: the timeline restarts now
            prefill = 0
            while self._waiting and len(self._running) < self.model.slots:
                sequence = self._waiting.popleft()
                if sequence.done.cancelled():  # the client went away while it waited
                    continue
                self._running.append(sequence)
                prefill += sequence.prompt_tokens
            if not self._running:
                continue
            seconds = self.model.step_seconds(len(self._running), prefill)
            deadline += seconds
            delay = deadline - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self.stats.late_s = max(self.stats.late_s, -delay)
                deadline = max(deadline, loop.time() - 0.05)  # make up small lags, never a long stall
            stats = self.stats
            stats.steps += 1
            stats.busy_s += seconds
            stats.max_running = max(stats.max_running, len(self._running))
            still = []
            for sequence in self._running:
                sequence.generated += 1
                if sequence.generated >= sequence.completion_tokens:
                    if not sequence.done.done():
                        sequence.done.set_result(None)
                else:
                    still.append(sequence)
            self._running = still


# --- HTTP ---------------------------------------------------------------------------------------------------

Responder = Callable[[dict[str, Any]], tuple[str, int, str]]
"""request body -> (answer text, completion tokens, role name for the stats)."""


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """Prompt tokens of a chat request, as a BPE tokenizer counts English roughly: 4 characters a token."""
    chars = sum(len(str(m.get("content", ""))) for m in body.get("messages") or [] if isinstance(m, dict))
    return max(1, chars // 4)


class BatchingHTTPServer:
    """`BatchingEngine` behind TGI's HTTP routes (`/info`, `/health`, `/v1/models`, `/v1/chat/completions`)."""

    def __init__(self, model: ServerModel, responder: Responder, *, model_id: str = "loopback/batching"):
        self.engine = BatchingEngine(model)
        self.responder = responder
        self.model_id = model_id
        self._server: asyncio.AbstractServer | None = None
        self.url = ""

    async def start(self, host: str = "127.0.0.1") -> None:
        self.engine.start()
        self._server = await asyncio.start_server(self._connection, host, 0, backlog=1024)
        port = self._server.sockets[0].getsockname()[1]
        self.url = base_url(host, port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.engine.stop()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                request_line, *lines = head.decode("latin-1").split("\r\n")
                method, path = request_line.split(" ", 2)[:2]
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
                body = await reader.readexactly(int(headers.get("content-length") or 0))
                status, payload, extra = await self._route(method, path.split("?", 1)[0], body)
                data = json.dumps(payload).encode()
                reason = {200: "OK", 404: "Not Found", 422: "Unprocessable Entity", 429: "Too Many Requests"}.get(
                    status, "OK"
                )
                extra_headers = "".join(f"{k}: {v}\r\n" for k, v in extra.items())
                writer.write(
                    f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length:"
                    f" {len(data)}\r\n{extra_headers}\r\n".encode()
                    + data
                )
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return  # the client went away, or the server is stopping
        finally:
            writer.close()

    async def _route(self, method: str, path: str, raw: bytes) -> tuple[int, Any, dict[str, str]]:
        if method == "GET":
            if path == "/info":
                info = {
                    "model_id": self.model_id,
                    "max_concurrent_requests": self.engine.model.slots,
                    "router": "text-generation-router",
                    "version": "batching-sim",
                }
                return 200, info, {}
            if path == "/health":
                return 200, {}, {}
            if path == "/v1/models":
                return (
                    200,
                    {"object": "list", "data": [{"id": self.model_id, "object": "model", "owned_by": "loopback"}]},
                    {},
                )
            return 404, {"error": f"no route for GET {path}"}, {}
        if method != "POST" or not path.endswith("/chat/completions"):
            return 404, {"error": f"no route for {method} {path}"}, {}
        try:
            body = json.loads(raw)
        except ValueError:
            return 422, {"error": "Failed to deserialize the JSON body", "error_type": "validation"}, {}
        try:
            self.engine.admit()
        except Overloaded:
            return (
                429,
                {"error": "Model is overloaded", "error_type": "overloaded"},
                {"Retry-After": f"{self.engine.model.retry_after_s / self.engine.model.speed:.3g}"},
            )
        text, completion_tokens, role = self.responder(
            body
        )  # after admission: a refused request takes no answer length
        by_role = self.engine.stats.requests_by_role
        by_role[role] = by_role.get(role, 0) + 1
        prompt_tokens = estimate_prompt_tokens(body)
        await self.engine.generate(prompt_tokens, completion_tokens)
        completion = {
            "id": "",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_id,
            "system_fingerprint": "batching-sim",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return 200, completion, {}


def stats_record(server: BatchingHTTPServer) -> dict[str, Any]:
    """The server's stats with its bound for the work it was given (see the module docstring)."""
    stats, model = server.engine.stats, server.engine.model
    record = asdict(stats)
    record["bound_s"] = model.bound_seconds(stats.completion_tokens, stats.prompt_tokens)
    return record
