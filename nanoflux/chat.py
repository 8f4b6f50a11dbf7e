"""The chat interface shared by every role backend (HTTP endpoints and the embedded model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from nanoflux.errors import NanoFluxError


@dataclass
class ChatRequest:
    """One chat-completion request, backend-agnostic."""

    messages: list[dict[str, str]]
    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float | None = None
    seed: int | None = None
    # JSON schema the answer must follow; backends constrain generation to it where they can.
    json_schema: dict[str, Any] | None = None
    # Arguments for the server's chat template, e.g. {"enable_thinking": False} for Qwen3; sent where the server reads
    # them per request (`nanoflux.endpoints.template_kwargs`).
    chat_template_kwargs: dict[str, Any] | None = None
    # The role asking (player_a, judge, ...): named in logs and errors, and counted per role. Roles on one endpoint
    # share a client, so the client's own name cannot say which role a request came from. Not part of what is asked:
    # leave it out of request fingerprints.
    role: str | None = None


@dataclass
class ChatResponse:
    """The text a backend returned, with its token accounting."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    # How many failed attempts preceded this answer (transport retries).
    retries: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


class EndpointError(NanoFluxError, RuntimeError):
    """A request that failed for good: a non-retryable status, or every attempt used up.

    `role` and `endpoint` (a public URL or model id: never a key) say who asked whom; `server_message` is the server's
    own error text; `kind` the failure class ("429", "500", "timeout", "connection", "offline", ...).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        attempts: int = 1,
        role: str | None = None,
        endpoint: str | None = None,
        server_message: str | None = None,
        kind: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.attempts = attempts
        self.role = role
        self.endpoint = endpoint
        self.server_message = server_message
        self.kind = kind


class ChatClient(Protocol):
    """What roles need from a backend: one async chat call."""

    name: str

    async def chat(self, request: ChatRequest) -> ChatResponse: ...
