"""HTTP transport for roles: one OpenAI-style chat call, with retries, timeouts and bounded concurrency.

`EndpointClient` wraps `huggingface_hub.AsyncInferenceClient` and knows nothing about prompts or parsing.
It talks to a URL (TGI, Inference Endpoint, vLLM, llama.cpp, any OpenAI-chat-compatible server) or to a
Hub model id through Inference Providers.

Why a retry layer here: `AsyncInferenceClient` does not retry. With huggingface_hub 2.x it raises
- `HfHubHTTPError` (status in `err.response.status_code`, headers in `err.response.headers`) for HTTP >= 400,
- `InferenceTimeoutError` when the underlying `httpx2` client times out,
- `httpx2.TransportError` subclasses (connect / read errors, peer closed mid-body) unwrapped,
- `json.JSONDecodeError` / `ValueError` when a 200 body is not a JSON object (parsed lazily by the client).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx2
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError, OfflineModeIsEnabled

from builder.chat import ChatRequest, ChatResponse, EndpointError

logger = logging.getLogger(__name__)

STRUCTURED_OUTPUT_MODES = ("json_schema", "json", "none")
# 408 Request Timeout, 425 Too Early, 429 Too Many Requests; every 5xx is retried as well.
RETRYABLE_4XX = frozenset({408, 425, 429})
# What a 400/422 body says when the server rejects the structured-output request itself.
_STRUCTURED_OUTPUT_COMPLAINT = re.compile(r"response_format|grammar|json_schema|guided|structured", re.IGNORECASE)


@dataclass
class RetryPolicy:
    """How hard to try one request: total attempts, full-jitter backoff bounds, per-attempt timeout."""

    max_attempts: int = 6
    backoff_base: float = 0.5  # seconds
    backoff_max: float = 30.0
    timeout: float = 120.0  # per attempt, seconds


@dataclass
class TransportStats:
    """Counters for one endpoint. Contains no credentials or URLs, so it is safe to log or save."""

    requests: int = 0  # chat() calls
    attempts: int = 0  # HTTP attempts, retries included
    retries: int = 0
    errors_by_kind: Counter[str] = field(default_factory=Counter)  # "429", "503", "timeout", "invalid_body", ...
    failures: int = 0  # chat() calls that ended in EndpointError
    prompt_tokens: int = 0
    completion_tokens: int = 0


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
    ):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP-date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT; a naive result means the zone was missing
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(attempt: int, policy: RetryPolicy, rng: random.Random, retry_after: float | None = None) -> float:
    """Full-jitter exponential backoff after failed attempt number `attempt` (0-based).

    `Retry-After` is a lower bound (the server knows best when it will have room), but never beyond
    `backoff_max`, so a hostile or confused header cannot park a worker for hours.
    """
    delay = rng.uniform(0.0, min(policy.backoff_max, policy.backoff_base * 2**attempt))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, policy.backoff_max)


def _snippet(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


HF_HOSTS = ("huggingface.co", "hf.co", "huggingface.cloud", "hf.space")


def _is_hugging_face(base_url: str | None) -> bool:
    """Whether a request may carry the saved Hub login when no token is given. Without a token, huggingface_hub
    sends the login saved by `hf auth login` to *any* URL; a custom server (vLLM, llama.cpp, someone's TGI) must
    not receive it."""
    if base_url is None:
        return True  # a Hub model id: Inference Providers, on huggingface.co
    host = (urlsplit(base_url).hostname or "").lower()
    return any(host == h or host.endswith("." + h) for h in HF_HOSTS)


def _redact_url(url: str) -> str:
    """Scheme, host, port and path only: query strings and user-info may carry keys."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _server_message(err: HfHubHTTPError) -> str:
    """What the server said, without the URL huggingface_hub puts in str(err)."""
    if err.server_message:
        return _snippet(err.server_message)
    try:
        return _snippet(err.response.text)
    except Exception:  # body not read (streaming, very large): nothing to show
        return ""


class EndpointClient:
    """Chat transport to one endpoint; implements `builder.chat.ChatClient`.

    Give `base_url` (TGI / Inference Endpoint / vLLM / llama.cpp / OpenAI-compatible server), `model`
    (a Hub model id served by Inference Providers), or both: with a URL, `model` is only sent as the
    request's `model` field (vLLM and OpenAI servers check it; TGI ignores it).

    Use from any event loop; `aclose()` (or `async with`) releases the HTTP connections.
    """

    def __init__(
        self,
        *,
        name: str,
        base_url: str | None = None,
        model: str | None = None,
        token: str | None = None,
        max_concurrency: int = 8,
        retry: RetryPolicy | None = None,
        structured_output: str = "json_schema",
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
    ):
        if not base_url and not model:
            raise ValueError(f"endpoint {name!r}: set `base_url` (a server URL) or `model` (a Hub model id), or both")
        if structured_output not in STRUCTURED_OUTPUT_MODES:
            raise ValueError(
                f"endpoint {name!r}: structured_output must be one of {STRUCTURED_OUTPUT_MODES}, "
                f"got {structured_output!r}"
            )
        if max_concurrency < 1:
            raise ValueError(f"endpoint {name!r}: max_concurrency must be >= 1")
        self.name = name
        self.base_url = base_url
        self.model = model
        self.max_concurrency = max_concurrency
        self.retry = retry if retry is not None else RetryPolicy()
        if self.retry.max_attempts < 1:
            raise ValueError(f"endpoint {name!r}: retry.max_attempts must be >= 1")
        self.structured_output = structured_output
        self.stats = TransportStats()
        self._token = token  # only ever handed to AsyncInferenceClient; see __repr__
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        # The HTTP client and the semaphore belong to one event loop; rebuilt if called from another.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: AsyncInferenceClient | None = None
        self._semaphore: asyncio.Semaphore | None = None

    def __repr__(self) -> str:
        target = _redact_url(self.base_url) if self.base_url else self.model
        return f"EndpointClient(name={self.name!r}, target={target!r}, structured_output={self.structured_output!r})"

    async def __aenter__(self) -> EndpointClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections of the current loop's client."""
        client, self._client, self._loop, self._semaphore = self._client, None, None, None
        if client is not None:
            await client.close()

    def _loop_state(self) -> tuple[AsyncInferenceClient, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._client is None or self._semaphore is None:
            # Connections from a previous (closed) loop cannot be reused; drop them.
            self._loop = loop
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
            # huggingface_hub treats base_url and model as aliases (one target), so only one is given here;
            # the model id travels in the request body instead.
            self._client = AsyncInferenceClient(
                base_url=self.base_url or None,
                model=None if self.base_url else self.model,
                token=self._token,
                # Without a token huggingface_hub falls back to the saved login, whatever the URL; an explicit empty
                # Authorization header (request headers override its own) keeps that login away from custom servers.
                headers=None if self._token or _is_hugging_face(self.base_url) else {"authorization": ""},
                timeout=self.retry.timeout,
            )
        return self._client, self._semaphore

    def _response_format(self, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is None or self.structured_output == "none":
            return None
        if self.structured_output == "json":
            return {"type": "json", "value": schema}  # TGI grammar
        # OpenAI style. Note: for a URL target huggingface_hub 2.x rewrites this to TGI's
        # {"type": "json_object", "value": schema} before sending (see HFInferenceConversational).
        return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}

    async def chat(self, request: ChatRequest) -> ChatResponse:
        """Send one chat request; retry transient failures; raise EndpointError when it fails for good."""
        self.stats.requests += 1
        policy = self.retry
        for attempt in range(policy.max_attempts):
            try:
                response = await self._attempt(request)
            except _AttemptFailed as failed:
                self.stats.errors_by_kind[failed.kind] += 1
                attempts = attempt + 1
                if not failed.retryable or attempts >= policy.max_attempts:
                    self.stats.failures += 1
                    why = "not retryable" if not failed.retryable else f"gave up after {attempts} attempts"
                    raise EndpointError(
                        f"endpoint {self.name!r}: {failed.detail} ({why})", status=failed.status, attempts=attempts
                    ) from None  # the cause carries the request (URL, auth header): keep it out of tracebacks
                delay = backoff_delay(attempt, policy, self._rng, failed.retry_after)
                self.stats.retries += 1
                logger.warning(
                    "endpoint %s: attempt %d/%d failed (%s); retrying in %.2fs",
                    self.name,
                    attempts,
                    policy.max_attempts,
                    failed.kind,
                    delay,
                )
                await self._sleep(delay)  # outside the semaphore: a backing-off request holds no slot
                continue
            response.retries = attempt
            self.stats.prompt_tokens += response.prompt_tokens
            self.stats.completion_tokens += response.completion_tokens
            return response
        raise AssertionError("unreachable: the loop returns or raises")

    async def _attempt(self, request: ChatRequest) -> ChatResponse:
        """One HTTP attempt under the concurrency limit; every failure becomes `_AttemptFailed`."""
        client, semaphore = self._loop_state()
        response_format = self._response_format(request.json_schema)
        async with semaphore:
            self.stats.attempts += 1
            try:
                # The client timeout bounds each socket operation; wait_for bounds the whole attempt
                # (a server trickling bytes would otherwise never time out).
                output = await asyncio.wait_for(
                    client.chat_completion(
                        messages=request.messages,  # type: ignore[arg-type]
                        model=self.model,
                        max_tokens=request.max_tokens,
                        temperature=request.temperature,
                        top_p=request.top_p,
                        seed=request.seed,
                        response_format=response_format,  # type: ignore[arg-type]
                    ),
                    timeout=self.retry.timeout,
                )
            except HfHubHTTPError as err:
                raise self._classify_http_error(err, sent_response_format=response_format is not None) from None
            except (TimeoutError, InferenceTimeoutError, httpx2.TimeoutException):
                raise _AttemptFailed("timeout", f"timed out after {self.retry.timeout:g}s", retryable=True) from None
            except OfflineModeIsEnabled:
                raise _AttemptFailed(
                    "offline", "HF_HUB_OFFLINE is set, so huggingface_hub refuses every request", retryable=False
                ) from None
            except httpx2.TransportError as err:  # connect/read errors, peer closed mid-body
                raise _AttemptFailed("connection", f"connection error: {type(err).__name__}", retryable=True) from None
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise _AttemptFailed("invalid_body", "response body is not valid JSON", retryable=True) from None
            except ValueError as err:
                # huggingface_hub parses the 200 body lazily: a JSON list/string ends up here too.
                if str(err).startswith(("Invalid data type", "Invalid input data")):
                    raise _AttemptFailed("invalid_body", "response body is not a JSON object", retryable=True) from None
                raise _AttemptFailed("config", f"cannot build the request: {err}", retryable=False) from None
        return self._to_response(output)

    def _classify_http_error(self, err: HfHubHTTPError, *, sent_response_format: bool) -> _AttemptFailed:
        status = err.response.status_code
        message = _server_message(err)
        detail = f"HTTP {status}" + (f": {message}" if message else "")
        if status in (400, 422) and sent_response_format and _STRUCTURED_OUTPUT_COMPLAINT.search(message):
            return _AttemptFailed(
                str(status),
                f"{detail}. The server rejected the structured-output request (structured_output="
                f"{self.structured_output!r}); set `structured_output: none` for this endpoint "
                "(or 'json' for TGI, 'json_schema' for OpenAI-style servers)",
                retryable=False,
                status=status,
            )
        retryable = status in RETRYABLE_4XX or status >= 500
        retry_after = parse_retry_after(err.response.headers.get("Retry-After")) if retryable else None
        return _AttemptFailed(str(status), detail, retryable=retryable, status=status, retry_after=retry_after)

    @staticmethod
    def _to_response(output: Any) -> ChatResponse:
        choices = getattr(output, "choices", None)
        if not choices:
            raise _AttemptFailed("invalid_body", "response has no choices", retryable=True)
        choice = choices[0]
        message = getattr(choice, "message", None)
        if message is None:
            raise _AttemptFailed("invalid_body", "choices[0] has no message", retryable=True)
        text = getattr(message, "content", None)  # None: e.g. a tool call or an empty generation
        if text is not None and not isinstance(text, str):
            raise _AttemptFailed("invalid_body", "choices[0].message.content is not a string", retryable=True)
        usage = getattr(output, "usage", None)
        return ChatResponse(
            text=text or "",
            prompt_tokens=int(getattr(usage, "prompt_tokens", None) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", None) or 0),
            finish_reason=getattr(choice, "finish_reason", None),
        )
