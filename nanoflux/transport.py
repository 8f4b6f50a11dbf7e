"""HTTP transport for roles: one chat call, with retries, a capacity-seeking concurrency limit, and the
structured-output request the server actually reads.

`EndpointClient` knows nothing about prompts or parsing. Its target is
- a server URL (TGI, Inference Endpoint, vLLM, llama.cpp, any OpenAI-chat-compatible server): NanoFlux writes the
  request body itself and posts it with `httpx2`. huggingface_hub's `AsyncInferenceClient` is not used for URLs: it
  rewrites an OpenAI `json_schema` response_format into TGI's `{"type": "json_object", "value": schema}`, which vLLM
  rejects and llama.cpp's Python server silently ignores (it then produces any JSON, not the schema's);
- a Hub model id (Inference Providers): through `AsyncInferenceClient`, which routes to the provider.

Structured output (`structured_output`), one shape per server:
- `openai`: `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}` (vLLM, SGLang, OpenAI-compatible
  servers, Inference Providers);
- `tgi`: TGI's grammar `{"type": "json", "value": schema}` (every TGI since 1.4.3; 3.x reads it too);
- `llama_cpp`: `{"type": "json_object", "schema": schema}` (llama-cpp-python's server, llama.cpp's `llama-server`);
- `none`: no response_format (the roles parse tolerantly);
- `auto` (default): asks the server's routes once what it is (`detect_server`) and sends its shape.

Retries: 408/425/429/5xx, timeouts, connection errors and truncated or invalid JSON bodies are retried with
full-jitter exponential backoff that honours `Retry-After`; other 4xx, and a 5xx whose body is a request-validation
error (llama-cpp-python answers 500 to a response_format it cannot read), fail at once with the server's own text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2
from huggingface_hub import AsyncInferenceClient, constants
from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError, OfflineModeIsEnabled

from nanoflux.capacity import AdaptiveLimit, shared_limit
from nanoflux.chat import ChatRequest, ChatResponse, EndpointError
from nanoflux.connections import Connections
from nanoflux.endpoints import (
    LEGACY_MODES,
    STRUCTURED_OUTPUT_MODES,
    ServerKind,
    chat_url,
    detect_server,
    is_hugging_face_host,
    resolve_token,
    response_format,
    route_url,
    template_kwargs,
)
from nanoflux.recipe import public_url
from nanoflux.retries import RETRYABLE_4XX, RetryPolicy, backoff_delay, parse_retry_after

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONCURRENCY = 256
OVERLOAD_STATUSES = frozenset({429, 503, 504})  # the server says it has no room: the concurrency limit is cut
# A rejected request, whatever the status: pydantic (llama-cpp-python, FastAPI), serde (TGI), OpenAI-style servers.
_VALIDATION_ERROR = re.compile(
    r"validation error|Input should be|Field required|Extra inputs are not permitted|literal_error"
    r"|Failed to deserialize|missing field|unknown variant|invalid_request_error",
    re.IGNORECASE,
)
_RESPONSE_FORMAT_COMPLAINT = re.compile(
    r"response_format|grammar|json_schema|json_object|guided|structured", re.IGNORECASE
)


@dataclass
class TransportStats:
    """Counters for one client. Contains no credentials or URLs, so it is safe to log or save."""

    requests: int = 0  # chat() calls
    attempts: int = 0  # HTTP chat requests sent, retries included: what the endpoint saw (and billed)
    attempts_by_role: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    errors_by_kind: Counter[str] = field(default_factory=Counter)  # "429", "503", "timeout", "invalid_body", ...
    failures: int = 0  # chat() calls that ended in EndpointError
    prompt_tokens: int = 0  # of every answered attempt
    completion_tokens: int = 0
    answers_without_usage: int = 0  # 200 answers that reported no token counts
    probes: int = 0  # GET requests of `structured_output: auto` detection


class _AttemptFailed(Exception):
    """One failed attempt, classified. `kind` feeds stats; `retryable` decides whether to go on."""

    def __init__(
        self,
        kind: str,
        detail: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
        server_message: str | None = None,
        fix: str | None = None,
    ):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        self.server_message = server_message
        self.fix = fix


class _RedactQueryStrings(logging.Filter):
    """httpx2 logs every request's full URL at INFO: a key in a base_url's query string would land in the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(public_url(str(a)) if isinstance(a, httpx2.URL) else a for a in record.args)
        return True


logging.getLogger("httpx2").addFilter(_RedactQueryStrings())


# --- the client ------------------------------------------------------------------------------------------


@dataclass
class _LoopState:
    """What belongs to one event loop: the HTTP client, the shared limit, the detection lock."""

    loop: asyncio.AbstractEventLoop
    limit: AdaptiveLimit
    detect_lock: asyncio.Lock
    http: Connections | None = None
    hub: AsyncInferenceClient | None = None


class EndpointClient:
    """Chat transport to one endpoint; implements `nanoflux.chat.ChatClient`.

    Give `base_url` (a server URL), `model` (a Hub model id served by Inference Providers), or both: with a URL,
    `model` is only sent as the request's `model` field (vLLM checks it; TGI ignores it). The key is `token` if given,
    else `resolve_token(base_url, token_env)`. `max_concurrency` bounds the adaptive limit shared by every client of
    the same endpoint in the running loop. Use from any event loop; `aclose()` (or `async with`) releases connections.
    """

    def __init__(
        self,
        *,
        name: str,
        base_url: str | None = None,
        model: str | None = None,
        token: str | None = None,
        token_env: str | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        retry: RetryPolicy | None = None,
        structured_output: str = "auto",
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
    ):
        if not base_url and not model:
            raise ValueError(f"endpoint {name!r}: set `base_url` (a server URL) or `model` (a Hub model id), or both")
        mode = LEGACY_MODES.get(structured_output, structured_output)
        if mode not in STRUCTURED_OUTPUT_MODES:
            raise ValueError(
                f"endpoint {name!r}: structured_output must be one of {STRUCTURED_OUTPUT_MODES}, got"
                f" {structured_output!r}"
            )
        if structured_output in LEGACY_MODES:
            logger.warning("%s: structured_output %r is now called %r", name, structured_output, mode)
        if max_concurrency < 1:
            raise ValueError(f"endpoint {name!r}: max_concurrency must be >= 1")
        self.name = name
        self.base_url = base_url or None
        self.model = model
        self.endpoint: str = public_url(self.base_url) or str(model)  # what logs and errors name
        self.max_concurrency = max_concurrency
        self.retry = retry if retry is not None else RetryPolicy()
        if self.retry.max_attempts < 1:
            raise ValueError(f"endpoint {name!r}: retry.max_attempts must be >= 1")
        self.structured_output = mode  # as configured; `server.mode` is what is sent
        self.stats = TransportStats()
        self._token = token if token is not None else resolve_token(self.base_url, token_env)  # see __repr__
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._server: ServerKind | None = None
        self._template_warned = False  # the chat_template_kwargs warning: once per client
        if not self.base_url:
            self._server = ServerKind("inference-providers", "openai" if mode == "auto" else mode, "a Hub model id")
        elif mode != "auto":
            self._server = ServerKind("configured", mode, f"structured_output: {mode}")
        self._state: _LoopState | None = None
        self._limit: AdaptiveLimit | None = None

    def __repr__(self) -> str:
        return (
            f"EndpointClient(name={self.name!r}, target={self.endpoint!r},"
            f" structured_output={self.structured_output!r})"
        )

    @property
    def server(self) -> ServerKind | None:
        """What serves the endpoint and the mode sent to it; None until `auto` has asked (at the first request)."""
        return self._server

    @property
    def structured_output_mode(self) -> str | None:
        """The structured-output mode in use (`auto` resolved), or None before the first request."""
        return self._server.mode if self._server else None

    @property
    def concurrency(self) -> AdaptiveLimit | None:
        """The adaptive concurrency limit of the current (or last) event loop, shared per endpoint."""
        return self._limit

    async def __aenter__(self) -> EndpointClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections of the current loop's client."""
        state, self._state = self._state, None
        if state is not None and state.http is not None:
            await state.http.aclose()
        if state is not None and state.hub is not None:
            await state.hub.close()

    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        if self._state is None or self._state.loop is not loop:
            # Connections from a previous (closed) loop cannot be reused; drop them.
            key = public_url(route_url(self.base_url, "")) if self.base_url else f"hub:{self.model}"
            state = _LoopState(loop, shared_limit(str(key), self.max_concurrency), asyncio.Lock())
            if self.base_url:
                state.http = Connections(self.max_concurrency, self.retry.timeout)
            else:
                state.hub = AsyncInferenceClient(model=self.model, token=self._token, timeout=self.retry.timeout)
            self._state, self._limit = state, state.limit
        return self._state

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._token}"} if self._token else {}

    async def _resolve_server(self, state: _LoopState) -> ServerKind:
        if self._server is not None:
            return self._server
        async with state.detect_lock:
            if self._server is None:
                assert state.http is not None and self.base_url
                try:
                    async with state.http.lease() as http:
                        server, sent = await detect_server(http, self.base_url, self._headers())
                except httpx2.TimeoutException:
                    self.stats.probes += 1
                    raise _AttemptFailed(
                        "timeout", "the server did not answer its routes in time", retryable=True
                    ) from None
                except httpx2.TransportError as err:
                    self.stats.probes += 1
                    raise _AttemptFailed(
                        "connection", f"connection error: {type(err).__name__}", retryable=True
                    ) from None
                self.stats.probes += sent
                self._server = server
                logger.info(
                    "%s @ %s: %s server (%s); structured_output auto -> %s",
                    self.name,
                    self.endpoint,
                    server.server,
                    server.evidence,
                    server.mode,
                )
        return self._server

    # -- one request -------------------------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> ChatResponse:
        """Send one chat request; retry transient failures; raise EndpointError when it fails for good."""
        role = request.role or self.name
        self.stats.requests += 1
        policy = self.retry
        state = self._loop_state()
        paused = state.limit.pause_remaining()  # another request's Retry-After
        if paused > 0:
            await self._sleep(min(paused, policy.backoff_max))
        for attempt in range(policy.max_attempts):
            try:
                response = await self._attempt(state, request, role)
            except _AttemptFailed as failed:
                self.stats.errors_by_kind[failed.kind] += 1
                attempts = attempt + 1
                if failed.retry_after is not None:
                    state.limit.pause(min(failed.retry_after, policy.backoff_max))
                if not failed.retryable or attempts >= policy.max_attempts:
                    self.stats.failures += 1
                    raise self._error(failed, role, attempts) from None  # the cause carries the request: keep it out
                delay = min(
                    policy.backoff_max,
                    max(backoff_delay(attempt, policy, self._rng, failed.retry_after), state.limit.pause_remaining()),
                )
                self.stats.retries += 1
                # An overloaded server is what the adaptive limit looks for (it cuts and retries): INFO, not WARNING.
                level = logging.INFO if failed.status in OVERLOAD_STATUSES else logging.WARNING
                logger.log(
                    level,
                    "%s @ %s: attempt %d/%d failed (%s); retrying in %.2fs",
                    role,
                    self.endpoint,
                    attempts,
                    policy.max_attempts,
                    failed.kind,
                    delay,
                )
                await self._sleep(delay)  # outside the limit: a backing-off request holds no slot
                continue
            response.retries = attempt
            return response
        raise AssertionError("unreachable: the loop returns or raises")

    def _error(self, failed: _AttemptFailed, role: str, attempts: int) -> EndpointError:
        why = "not retryable" if not failed.retryable else f"gave up after {attempts} attempts"
        message = f"{role} @ {self.endpoint}: {failed.detail} ({why})"
        if failed.fix:
            message += f". Fix: {failed.fix}"
        return EndpointError(
            message,
            status=failed.status,
            attempts=attempts,
            role=role,
            endpoint=self.endpoint,
            server_message=failed.server_message,
            kind=failed.kind,
        )

    async def _attempt(self, state: _LoopState, request: ChatRequest, role: str) -> ChatResponse:
        """One HTTP attempt under the endpoint's limit; every failure becomes `_AttemptFailed`."""
        if constants.HF_HUB_OFFLINE and is_hugging_face_host(
            self.base_url
        ):  # None: a Hub model id (Inference Providers)
            raise _AttemptFailed("offline", "HF_HUB_OFFLINE is set and this is a Hugging Face host", retryable=False)
        server = await self._resolve_server(state)
        fmt = response_format(server.mode, request.json_schema)
        slot = await state.limit.acquire()
        outcome, tokens = "error", 0
        try:
            self.stats.attempts += 1
            self.stats.attempts_by_role[role] += 1
            try:
                if state.http is not None:
                    async with state.http.lease() as http:
                        response = await self._post(http, request, fmt, server)
                else:
                    assert state.hub is not None
                    response = await self._post_hub(state.hub, request, fmt, server)
            except _AttemptFailed as failed:
                outcome = (
                    "overload"
                    if failed.status in OVERLOAD_STATUSES
                    else "timeout"
                    if failed.kind == "timeout"
                    else "error"
                )
                raise
            outcome, tokens = "ok", response.completion_tokens
        finally:
            state.limit.release(slot, outcome, tokens=tokens, key=role)
        self.stats.prompt_tokens += response.prompt_tokens
        self.stats.completion_tokens += response.completion_tokens
        return response

    async def _post(
        self, http: httpx2.AsyncClient, request: ChatRequest, fmt: dict[str, Any] | None, server: ServerKind
    ) -> ChatResponse:
        assert self.base_url
        body: dict[str, Any] = {
            "model": self.model or server.model or "tgi",  # TGI ignores it; vLLM needs the served name
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stream": False,
        }
        kwargs = template_kwargs(server, request.chat_template_kwargs)
        if request.chat_template_kwargs and kwargs is None and not self._template_warned:
            self._template_warned = True
            logger.warning(
                "%s @ %s: a %s server does not read chat_template_kwargs per request, so %s is not applied: set it in"
                " the server's chat template defaults",
                self.name,
                self.endpoint,
                server.server,
                json.dumps(request.chat_template_kwargs),
            )
        fields = (
            ("top_p", request.top_p),
            ("seed", request.seed),
            ("response_format", fmt),
            ("chat_template_kwargs", kwargs),
        )
        body.update((key, value) for key, value in fields if value is not None)
        try:
            # The client timeout bounds each socket operation; wait_for bounds the whole attempt
            # (a server trickling bytes would otherwise never time out).
            answer = await asyncio.wait_for(
                http.post(chat_url(self.base_url), json=body, headers=self._headers()), timeout=self.retry.timeout
            )
        except (TimeoutError, httpx2.TimeoutException):
            raise _AttemptFailed("timeout", f"timed out after {self.retry.timeout:g}s", retryable=True) from None
        except httpx2.TransportError as err:  # connect/read errors, peer closed mid-body
            raise _AttemptFailed("connection", f"connection error: {type(err).__name__}", retryable=True) from None
        if answer.status_code >= 400:
            raise self._classify(
                answer.status_code, _error_text(answer.text), answer.headers.get("Retry-After"), fmt, server
            )
        try:
            data = json.loads(answer.content)
        except (ValueError, UnicodeDecodeError):
            raise _AttemptFailed("invalid_body", "response body is not valid JSON", retryable=True) from None
        if not isinstance(data, dict):
            raise _AttemptFailed("invalid_body", "response body is not a JSON object", retryable=True)
        return self._to_response(data)

    async def _post_hub(
        self, hub: AsyncInferenceClient, request: ChatRequest, fmt: dict[str, Any] | None, server: ServerKind
    ) -> ChatResponse:
        try:
            output = await asyncio.wait_for(
                hub.chat_completion(
                    messages=request.messages,  # type: ignore[arg-type]
                    model=self.model,
                    max_tokens=request.max_tokens,
                    temperature=request.temperature,
                    top_p=request.top_p,
                    seed=request.seed,
                    response_format=fmt,  # type: ignore[arg-type]
                ),
                timeout=self.retry.timeout,
            )
        except HfHubHTTPError as err:
            status = err.response.status_code
            raise self._classify(
                status, _hub_error_text(err), err.response.headers.get("Retry-After"), fmt, server
            ) from None
        except (TimeoutError, InferenceTimeoutError, httpx2.TimeoutException):
            raise _AttemptFailed("timeout", f"timed out after {self.retry.timeout:g}s", retryable=True) from None
        except OfflineModeIsEnabled:
            raise _AttemptFailed(
                "offline", "HF_HUB_OFFLINE is set, so huggingface_hub refuses every request", retryable=False
            ) from None
        except httpx2.TransportError as err:
            raise _AttemptFailed("connection", f"connection error: {type(err).__name__}", retryable=True) from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _AttemptFailed("invalid_body", "response body is not valid JSON", retryable=True) from None
        except ValueError as err:
            # huggingface_hub parses the 200 body lazily: a JSON list/string ends up here too.
            if str(err).startswith(("Invalid data type", "Invalid input data")):
                raise _AttemptFailed("invalid_body", "response body is not a JSON object", retryable=True) from None
            raise _AttemptFailed("config", f"cannot build the request: {err}", retryable=False) from None
        return self._to_response(output)

    def _classify(
        self, status: int, message: str, retry_after: str | None, fmt: dict[str, Any] | None, server: ServerKind
    ) -> _AttemptFailed:
        detail = f"HTTP {status}" + (f": {message}" if message else "")
        rejected = 400 <= status < 500 or bool(_VALIDATION_ERROR.search(message))
        if rejected and fmt is not None and _RESPONSE_FORMAT_COMPLAINT.search(message):
            if self.structured_output == "auto":
                fix = (
                    f"structured_output: auto sent the {server.mode!r} shape ({server.server}: {server.evidence}); set"
                    " structured_output to the mode this server reads (openai, tgi, llama_cpp), or none"
                )
            else:
                fix = (
                    "set structured_output: auto for this role (NanoFlux then sends the shape this server reads), "
                    f"or none (got {self.structured_output!r})"
                )
            return _AttemptFailed(
                str(status),
                f"{detail}. The server rejected the structured-output request",
                retryable=False,
                status=status,
                server_message=message,
                fix=fix,
            )
        if rejected and status not in RETRYABLE_4XX:
            return _AttemptFailed(
                str(status),
                f"{detail}. The server rejected the request itself",
                retryable=False,
                status=status,
                server_message=message,
            )
        retryable = status in RETRYABLE_4XX or status >= 500
        after = parse_retry_after(retry_after) if retryable else None
        return _AttemptFailed(
            str(status), detail, retryable=retryable, status=status, retry_after=after, server_message=message
        )

    def _to_response(self, output: Any) -> ChatResponse:
        choices = _field(output, "choices")
        if not choices or not isinstance(choices, list):
            raise _AttemptFailed("invalid_body", "response has no choices", retryable=True)
        choice = choices[0]
        message = _field(choice, "message")
        if message is None:
            raise _AttemptFailed("invalid_body", "choices[0] has no message", retryable=True)
        text = _field(message, "content")  # None: e.g. a tool call or an empty generation
        if text is not None and not isinstance(text, str):
            raise _AttemptFailed("invalid_body", "choices[0].message.content is not a string", retryable=True)
        usage = _field(output, "usage")
        prompt_tokens, completion_tokens = (
            int(_field(usage, k) or 0) if usage else 0 for k in ("prompt_tokens", "completion_tokens")
        )
        if not usage:
            self.stats.answers_without_usage += 1
        return ChatResponse(
            text=text or "",
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=_field(choice, "finish_reason"),
        )


def _field(obj: Any, key: str) -> Any:
    """`obj[key]` for a plain JSON dict, `obj.key` for huggingface_hub's output types."""
    return obj.get(key) if type(obj) is dict else getattr(obj, key, None)


def _snippet(text: str, limit: int = 400) -> str:
    text = text.split('\n  File "', 1)[0]  # llama-cpp-python appends a server-side traceback
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _error_text(body: str) -> str:
    """The server's own error message from an error body: OpenAI's {"error": {"message"}}, TGI's {"error"},
    FastAPI's {"detail"}, or the raw text."""
    try:
        data = json.loads(body)
    except ValueError:
        return _snippet(body)
    if isinstance(data, dict):
        error = next((data[k] for k in ("error", "detail", "message") if data.get(k)), None)
        if isinstance(error, dict):
            error = error.get("message") or json.dumps(error)
        if error:
            return _snippet(error if isinstance(error, str) else json.dumps(error))
    return _snippet(body)


def _hub_error_text(err: HfHubHTTPError) -> str:
    """What the server said, without the URL huggingface_hub puts in str(err)."""
    if err.server_message:
        return _snippet(err.server_message)
    try:
        return _error_text(err.response.text)
    except Exception:  # body not read (streaming, very large): nothing to show
        return ""
