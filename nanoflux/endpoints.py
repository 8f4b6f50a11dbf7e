"""An endpoint's address and what serves it: its URLs, its key (by opt-in: the Hub login goes to Hugging Face hosts
only), the server behind it (detected once from its routes) and the request fields that server reads (the
structured-output shape, chat-template arguments). The transport (`nanoflux.transport`) sends what this decides."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx2
from huggingface_hub import get_token

from nanoflux.recipe import public_url

logger = logging.getLogger(__name__)

STRUCTURED_OUTPUT_MODES = ("auto", "openai", "tgi", "llama_cpp", "none")
LEGACY_MODES = {"json_schema": "openai", "json": "tgi"}  # the names before per-server modes
PROBE_TIMEOUT = 10.0  # seconds, per route asked by `detect_server`


@dataclass(frozen=True)
class ServerKind:
    """What serves an endpoint, and the structured-output mode used with it."""

    server: (
        str  # "tgi", "vllm", "llama-cpp-python", "llama.cpp", "openai-compatible", "inference-providers", "configured"
    )
    mode: str  # one of STRUCTURED_OUTPUT_MODES but `auto`
    evidence: str  # why: the route that said so, or the recipe
    model: str | None = None  # the model the server lists, when exactly one (sent when the role names none)


# --- hosts, keys and URLs --------------------------------------------------------------------------------

HF_HOSTS = ("huggingface.co", "hf.co")  # and their subdomains (router.huggingface.co: Inference Providers)
HF_HOST_SUFFIXES = (".hf.space", ".endpoints.huggingface.cloud")  # Spaces, Inference Endpoints


def is_hugging_face_host(base_url: str | None) -> bool:
    """Whether `base_url` is a Hugging Face host (None: a Hub model id, served on huggingface.co)."""
    if base_url is None:
        return True
    host = (urlsplit(base_url).hostname or "").lower()
    return any(host == h or host.endswith("." + h) for h in HF_HOSTS) or host.endswith(HF_HOST_SUFFIXES)


def resolve_token(base_url: str | None, token_env: str | None) -> str | None:
    """The key for an endpoint, by opt-in. A variable named by `token_env` is sent to whatever host the recipe names;
    without one (or when it is unset), only a Hugging Face host gets the Hub login (HF_TOKEN or `hf auth login`'s):
    a vLLM, llama.cpp or someone's TGI never receives it unasked."""
    if token_env:
        value = os.environ.get(token_env)
        if value:
            return value
        if not is_hugging_face_host(base_url):
            logger.warning("token_env %s is not set: no key is sent to %s", token_env, public_url(base_url))
            return None
    return get_token() if is_hugging_face_host(base_url) else None


def chat_url(base_url: str) -> str:
    """The chat-completions URL of a server URL, as huggingface_hub builds it (query string kept)."""
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path += "/chat/completions" if path.endswith("/v1") else "/v1/chat/completions"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def route_url(base_url: str, route: str) -> str:
    """`route` (e.g. "/info") at the server root: `base_url` less a trailing /chat/completions and /v1."""
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/")
    for suffix in ("/chat/completions", "/v1"):
        path = path.removesuffix(suffix)
    return urlunsplit((parts.scheme, parts.netloc, path + route, parts.query, ""))


def response_format(mode: str, schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """The `response_format` that asks a server of `mode` for JSON following `schema` (None: send none)."""
    if schema is None or mode == "none":
        return None
    if mode == "tgi":
        return {"type": "json", "value": schema}
    if mode == "llama_cpp":
        return {"type": "json_object", "schema": schema}
    if mode == "openai":
        return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    raise ValueError(f"no response_format for structured_output {mode!r}")


def template_kwargs(server: ServerKind, kwargs: dict[str, Any] | None) -> dict[str, Any] | None:
    """The request's `chat_template_kwargs` for `server`, or None where it would not be read. vLLM, SGLang and
    llama.cpp's `llama-server` apply them per request; TGI has no such field (huggingface/text-generation-inference
    #3259) and llama-cpp-python ignores it: set them in the server's chat template there."""
    if not kwargs or server.server in ("tgi", "llama-cpp-python") or server.mode == "tgi":
        return None
    return kwargs


# --- server detection ------------------------------------------------------------------------------------


async def _probe(http: httpx2.AsyncClient, url: str, headers: dict[str, str]) -> Any:
    """GET `url`: its JSON, or None for an error status or a body that is not JSON. Connection errors and timeouts
    propagate (the server is not reachable: nothing can be concluded)."""
    response = await http.get(url, headers=headers, timeout=PROBE_TIMEOUT)
    if response.status_code != 200:
        return None
    try:
        return response.json()
    except ValueError:
        return None


async def detect_server(http: httpx2.AsyncClient, base_url: str, headers: dict[str, str]) -> tuple[ServerKind, int]:
    """What serves `base_url`, from its routes; returns it with the number of GETs sent.

    - TGI (and Inference Endpoints running it): `GET /info` has `model_id` and `router`/`max_concurrent_requests`;
    - vLLM: `GET /v1/models` entries are `owned_by: "vllm"` (or `GET /version` is `{"version": ...}` alone);
    - llama-cpp-python (`python -m llama_cpp.server`): `owned_by: "me"`; llama.cpp's `llama-server`: `"llamacpp"`;
    - anything else answering: an OpenAI-compatible server.
    """
    sent = 1
    info = await _probe(http, route_url(base_url, "/info"), headers)
    if isinstance(info, dict) and "model_id" in info and ("router" in info or "max_concurrent_requests" in info):
        version = info.get("version", "?")
        return ServerKind("tgi", "tgi", f"GET /info (TGI {version})", str(info["model_id"])), sent
    sent += 1
    listing = await _probe(http, route_url(base_url, "/v1/models"), headers)
    data = listing.get("data") if isinstance(listing, dict) else None
    entries = [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []
    owners = {str(m.get("owned_by")) for m in entries}
    model = str(entries[0]["id"]) if len(entries) == 1 and entries[0].get("id") else None
    for owner, server, mode in (
        ("vllm", "vllm", "openai"),
        ("llamacpp", "llama.cpp", "llama_cpp"),
        ("me", "llama-cpp-python", "llama_cpp"),
    ):
        if owner in owners:
            return ServerKind(server, mode, f"GET /v1/models (owned_by {owner!r})", model), sent
    sent += 1
    version = await _probe(http, route_url(base_url, "/version"), headers)
    if isinstance(version, dict) and set(version) == {"version"}:
        return ServerKind("vllm", "openai", f"GET /version ({version['version']})", model), sent
    evidence = "no TGI, vLLM or llama.cpp route answered" + (" (GET /v1/models lists models)" if entries else "")
    return ServerKind("openai-compatible", "openai", evidence, model), sent
