"""EndpointClient against the scripted loopback TGI: real HTTP, no mocks of the client."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
import traceback
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from nanoflux.chat import ChatRequest, EndpointError
from nanoflux.endpoints import is_hugging_face_host, resolve_token
from nanoflux.retries import RetryPolicy, backoff_delay, parse_retry_after
from nanoflux.transport import EndpointClient
from tests.tgi_server import Fault, Reply, ScriptedTGI

# tests/conftest.py sets HF_HUB_OFFLINE=1; the loopback server must stay reachable.
pytestmark = pytest.mark.usefixtures("allow_loopback_offline")

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
TOKEN = "hf_FAKEsecret123"


class RecordingSleep:
    """Injected backoff sleep: records each delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


def make_client(server: ScriptedTGI, sleep: RecordingSleep | None = None, **overrides) -> EndpointClient:
    retry = overrides.pop("retry", RetryPolicy(max_attempts=4, backoff_base=0.01, backoff_max=5.0, timeout=5.0))
    return EndpointClient(
        name=overrides.pop("name", "tgi-test"),
        base_url=server.url,
        retry=retry,
        sleep=sleep or RecordingSleep(),
        rng=random.Random(0),
        **overrides,
    )


def ask(text: str = "hello there", **fields) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], **fields)


async def chat_once(client: EndpointClient, request: ChatRequest):
    async with client:
        return await client.chat(request)


@pytest.fixture
def server():
    with ScriptedTGI() as s:
        yield s


# -- normal answers and request shape --------------------------------------------------------------


def test_answer_carries_text_token_counts_and_finish_reason():
    with ScriptedTGI(
        responder=lambda body: Reply("forty two", finish_reason="length", prompt_tokens=11, completion_tokens=3)
    ) as server:
        client = make_client(server)
        response = asyncio.run(chat_once(client, ask()))
    assert response.text == "forty two"
    assert (response.prompt_tokens, response.completion_tokens) == (11, 3)
    assert response.finish_reason == "length"
    assert response.retries == 0
    assert (client.stats.requests, client.stats.attempts, client.stats.retries) == (1, 1, 0)
    assert (client.stats.prompt_tokens, client.stats.completion_tokens) == (11, 3)


def test_default_responder_echoes_the_last_user_message(server):
    response = asyncio.run(chat_once(make_client(server), ask("ping")))
    assert response.text == "echo: ping"
    assert response.finish_reason == "stop"


@pytest.mark.parametrize(
    ("mode", "expected_format"),
    [
        # What goes on the wire, exactly: huggingface_hub would rewrite OpenAI's json_schema into
        # {"type": "json_object", "value": ...} for a URL; NanoFlux writes the body itself.
        ("auto", {"type": "json", "value": SCHEMA}),  # the scripted server is a TGI
        ("tgi", {"type": "json", "value": SCHEMA}),
        ("json", {"type": "json", "value": SCHEMA}),  # the old name of tgi
        ("none", None),
    ],
)
def test_request_body_carries_sampling_fields_and_structured_output(server, mode, expected_format):
    client = make_client(server, model="org/model-7b", structured_output=mode)
    request = ask("give json", max_tokens=77, temperature=0.3, top_p=0.9, seed=1234, json_schema=SCHEMA)
    asyncio.run(chat_once(client, request))

    [received] = server.chat_requests
    body = received.json
    assert received.path == "/v1/chat/completions"
    assert body["model"] == "org/model-7b"
    assert body["messages"] == [{"role": "user", "content": "give json"}]
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"]) == (77, 0.3, 0.9, 1234)
    assert body.get("stream") is False
    assert body.get("response_format") == expected_format


@pytest.mark.parametrize("mode", ["auto", "openai", "tgi", "llama_cpp", "none"])
def test_no_response_format_is_sent_without_a_schema(server, mode):
    asyncio.run(chat_once(make_client(server, structured_output=mode), ask()))
    assert "response_format" not in server.chat_requests[0].json


def test_health_and_info_answer_like_tgi(server):
    import httpx2

    assert httpx2.get(f"{server.url}/health").status_code == 200
    info = httpx2.get(f"{server.url}/info").json()
    assert info["model_id"] == "scripted/tgi" and "max_concurrent_requests" in info


# -- retries ---------------------------------------------------------------------------------------


def test_429_with_retry_after_is_retried_after_the_advertised_delay(server, caplog):
    caplog.set_level(logging.INFO, logger="nanoflux.transport")
    server.script(Fault.status(429, retry_after=2))
    sleep = RecordingSleep()
    client = make_client(server, sleep)

    response = asyncio.run(chat_once(client, ask()))

    assert response.text == "echo: hello there"
    assert response.retries == 1
    assert sleep.delays == [2.0]  # Retry-After is a lower bound over the (tiny) jittered backoff
    assert client.stats.retries == 1
    assert client.stats.errors_by_kind == {"429": 1}
    assert server.request_count == 2
    [record] = [r for r in caplog.records if r.name == "nanoflux.transport" and "attempt" in r.getMessage()]
    assert record.levelno == logging.INFO  # an overloaded server is what the adaptive limit handles
    assert "tgi-test" in record.getMessage() and "429" in record.getMessage() and "2.00s" in record.getMessage()


def test_retry_after_is_capped_at_backoff_max(server):
    server.script(Fault.status(503, retry_after=3600))
    sleep = RecordingSleep()
    asyncio.run(chat_once(make_client(server, sleep), ask()))
    assert sleep.delays == [5.0]


def test_retry_after_accepts_an_http_date():
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    header = format_datetime(datetime(2030, 1, 1, 12, 0, 7, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(header, now=now) == pytest.approx(7.0)
    assert parse_retry_after("3", now=now) == 3.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None) is None


def test_backoff_is_full_jitter_within_exponential_bounds():
    policy = RetryPolicy(backoff_base=0.5, backoff_max=4.0)
    rng = random.Random(7)
    for attempt in range(8):
        for _ in range(50):
            assert 0.0 <= backoff_delay(attempt, policy, rng) <= min(4.0, 0.5 * 2**attempt)


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (Fault.status(503), "503"),
        (Fault.status(500), "500"),
        (Fault.status(408), "408"),
        (Fault.truncated(), "invalid_body"),
        (Fault.truncated(premature_close=True), "connection"),
        (Fault.invalid_json(), "invalid_body"),
        (Fault.disconnect(), "connection"),
    ],
    ids=lambda v: (
        v.kind + str(v.status_code) + ("-close" if v.premature_close else "") if isinstance(v, Fault) else ""
    ),
)
def test_transient_failure_is_retried_then_succeeds(server, fault, kind):
    server.script(fault)
    sleep = RecordingSleep()
    client = make_client(server, sleep)

    response = asyncio.run(chat_once(client, ask()))

    assert response.text == "echo: hello there"
    assert response.retries == 1
    assert len(sleep.delays) == 1
    assert client.stats.errors_by_kind == {kind: 1}
    assert server.request_count == 2


def test_timeout_is_retried_then_succeeds(server):
    server.script(Fault.delay(3.0))
    client = make_client(server, retry=RetryPolicy(max_attempts=3, backoff_base=0.01, timeout=0.3))

    started = time.monotonic()
    response = asyncio.run(chat_once(client, ask()))

    assert time.monotonic() - started < 2.0  # gave up on the slow attempt, did not wait it out
    assert response.text == "echo: hello there"
    assert response.retries == 1
    assert client.stats.errors_by_kind == {"timeout": 1}
    assert server.request_count == 2


def test_persistent_503_fails_after_exactly_max_attempts(server):
    server.script(*[Fault.status(503)] * 10)
    sleep = RecordingSleep()
    client = make_client(server, sleep, retry=RetryPolicy(max_attempts=4, backoff_base=0.5, backoff_max=30.0))

    with pytest.raises(EndpointError) as excinfo:
        asyncio.run(chat_once(client, ask()))

    assert excinfo.value.status == 503
    assert excinfo.value.attempts == 4
    assert server.request_count == 4
    assert len(sleep.delays) == 3
    assert all(0.0 <= d <= 0.5 * 2**i for i, d in enumerate(sleep.delays))
    assert client.stats.failures == 1 and client.stats.retries == 3
    assert client.stats.errors_by_kind == {"503": 4}


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_error_fails_immediately_with_one_request(server, status):
    server.script(Fault.status(status, message="bad input"))
    sleep = RecordingSleep()
    client = make_client(server, sleep)

    with pytest.raises(EndpointError) as excinfo:
        asyncio.run(chat_once(client, ask()))

    assert excinfo.value.status == status
    assert excinfo.value.attempts == 1
    assert "bad input" in str(excinfo.value)
    assert server.request_count == 1
    assert sleep.delays == []
    assert client.stats.failures == 1


def test_rejected_response_format_fails_fast_and_suggests_structured_output_auto(server):
    server.script(*[Fault.status(422, message="Grammar is not supported")] * 3)
    client = make_client(server, structured_output="tgi")

    with pytest.raises(EndpointError) as excinfo:
        asyncio.run(chat_once(client, ask(json_schema=SCHEMA)))

    assert "structured_output: auto" in str(excinfo.value)
    assert excinfo.value.status == 422
    assert excinfo.value.server_message == "Grammar is not supported"
    assert server.request_count == 1


@pytest.mark.parametrize(
    "where",
    [{"base_url": "https://x1.us-east-1.aws.endpoints.huggingface.cloud"}, {"model": "org/model"}],
    ids=["endpoint", "hub-model-id"],
)
def test_offline_mode_fails_fast_for_hugging_face_hosts(monkeypatch, where):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("HF_TOKEN", raising=False)  # with no token at all, the cause is still the offline mode
    sleep = RecordingSleep()
    client = EndpointClient(name="remote", sleep=sleep, **where)
    with pytest.raises(EndpointError, match="HF_HUB_OFFLINE") as excinfo:
        asyncio.run(chat_once(client, ask()))
    assert excinfo.value.attempts == 1
    assert sleep.delays == []


def test_offline_mode_does_not_stop_a_server_that_is_not_the_hub(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with ScriptedTGI() as plain:  # no loopback fixture needed: NanoFlux posts to URLs itself
        assert asyncio.run(chat_once(make_client(plain), ask("hi"))).text == "echo: hi"


# -- concurrency -----------------------------------------------------------------------------------


def test_max_concurrency_bounds_the_requests_in_flight_and_requests_overlap():
    latency = 0.25
    with ScriptedTGI(latency=latency) as server:
        client = make_client(server, max_concurrency=2)

        async def run_all():
            async with client:
                return await asyncio.gather(*(client.chat(ask(f"q{i}")) for i in range(8)))

        started = time.monotonic()
        responses = asyncio.run(run_all())
        elapsed = time.monotonic() - started

    assert sorted(r.text for r in responses) == sorted(f"echo: q{i}" for i in range(8))
    assert server.max_concurrent == 2
    assert 4 * latency * 0.9 <= elapsed < 6 * latency  # ~4 rounds of 2, not 8 in series


def test_client_is_reusable_across_event_loops(server):
    client = make_client(server)
    assert asyncio.run(chat_once(client, ask("one"))).text == "echo: one"
    assert asyncio.run(chat_once(client, ask("two"))).text == "echo: two"
    assert client.stats.requests == 2


# -- secrets and configuration ---------------------------------------------------------------------


def test_token_is_sent_but_never_logged_or_shown(server, caplog):
    caplog.set_level(logging.DEBUG)
    server.script(Fault.status(429, retry_after=0), Fault.status(400, message="nope"))
    client = make_client(server, token=TOKEN)

    with pytest.raises(EndpointError) as excinfo:
        asyncio.run(chat_once(client, ask()))

    assert [r.authorization for r in server.chat_requests] == [f"Bearer {TOKEN}"] * 2
    err = excinfo.value
    shown = [
        caplog.text,
        repr(client),
        str(client),
        repr(client.stats),
        str(err),
        repr(err),
        "".join(traceback.format_exception(err)),
    ]
    for text in shown:
        assert TOKEN not in text
    assert "tgi-test" in caplog.text  # the retry was logged, just without the secret


def test_repr_drops_url_credentials_and_query():
    client = EndpointClient(name="x", base_url="https://user:pw@tgi.example/v1?api_key=SECRET", token=TOKEN)
    assert repr(client) == "EndpointClient(name='x', target='https://tgi.example/v1', structured_output='auto')"


def test_missing_base_url_and_model_is_a_value_error_naming_both():
    with pytest.raises(ValueError) as excinfo:
        EndpointClient(name="nowhere", token=TOKEN)
    message = str(excinfo.value)
    assert "base_url" in message and "model" in message
    assert TOKEN not in message


def test_unknown_structured_output_mode_is_rejected():
    with pytest.raises(ValueError, match="structured_output"):
        EndpointClient(name="x", base_url="http://127.0.0.1:9", structured_output="xml")


# -- structured output per server (auto detection and explicit modes) --------------------------------------

SHAPES = {
    "openai": {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}},
    "tgi": {"type": "json", "value": SCHEMA},
    "llama_cpp": {"type": "json_object", "schema": SCHEMA},
}


@pytest.mark.parametrize(
    ("kind", "server_name", "mode"),
    [
        ("tgi", "tgi", "tgi"),
        ("vllm", "vllm", "openai"),
        ("llama_cpp", "llama-cpp-python", "llama_cpp"),
        ("openai", "openai-compatible", "openai"),
    ],
)
def test_auto_detects_the_server_once_and_sends_its_shape(kind, server_name, mode, caplog):
    caplog.set_level(logging.INFO, logger="nanoflux.transport")
    with ScriptedTGI(kind=kind, model_id="org/served-7b") as server:
        client = make_client(server)
        assert client.server is None and client.structured_output_mode is None

        async def three():
            async with client:
                return await asyncio.gather(*(client.chat(ask(f"q{i}", json_schema=SCHEMA)) for i in range(3)))

        asyncio.run(three())
        probes = [r for r in server.requests if r.method == "GET"]

    assert (client.server.server, client.structured_output_mode) == (server_name, mode)
    assert [r.json["response_format"] for r in server.chat_requests] == [SHAPES[mode]] * 3
    assert len(probes) == client.stats.probes <= 3  # asked once, not per request
    # With no model in the recipe, the model the server lists is sent (vLLM checks it).
    assert {r.json["model"] for r in server.chat_requests} == {"org/served-7b"}
    [line] = [r.getMessage() for r in caplog.records if "structured_output auto" in r.getMessage()]
    assert server_name in line and mode in line


@pytest.mark.parametrize(("kind", "sent"), [("vllm", True), ("openai", True), ("llama_cpp", False), ("tgi", False)])
def test_chat_template_kwargs_go_where_the_server_reads_them_and_a_warning_says_where_not(kind, sent, caplog):
    caplog.set_level(logging.WARNING, logger="nanoflux.transport")
    thinking_off = {"enable_thinking": False}
    with ScriptedTGI(kind=kind) as server:
        client = make_client(server)

        async def two():
            async with client:
                await client.chat(dataclasses.replace(ask("q0"), chat_template_kwargs=thinking_off))
                await client.chat(dataclasses.replace(ask("q1"), chat_template_kwargs=thinking_off))
                await client.chat(ask("q2"))  # none asked: none sent

        asyncio.run(two())
    bodies = [r.json for r in server.chat_requests]
    assert (
        [b.get("chat_template_kwargs") for b in bodies] == [thinking_off, thinking_off, None] if sent else [None] * 3
    )
    warnings = [r.getMessage() for r in caplog.records if "chat_template_kwargs" in r.getMessage()]
    assert len(warnings) == (0 if sent else 1)  # once per client, naming what was not applied
    assert sent or '{"enable_thinking": false}' in warnings[0]


def test_auto_against_an_unreachable_server_retries_and_detects_when_it_answers():
    sleep = RecordingSleep()
    with ScriptedTGI() as server:
        url = server.url
    client = EndpointClient(
        name="late", base_url=url, sleep=sleep, retry=RetryPolicy(max_attempts=2, backoff_base=0.01)
    )
    with pytest.raises(EndpointError) as excinfo:
        asyncio.run(chat_once(client, ask()))
    assert excinfo.value.kind == "connection" and excinfo.value.attempts == 2
    assert client.server is None  # nothing concluded from a server that did not answer


@pytest.mark.parametrize(
    ("kind", "mode", "status", "says"),
    [
        ("llama_cpp", "tgi", 500, "Input should be 'text' or 'json_object'"),
        ("llama_cpp", "openai", 500, "Input should be 'text' or 'json_object'"),
        ("tgi", "openai", 422, "missing field `value`"),
        ("vllm", "tgi", 400, "Input should be 'text', 'json_object'"),
    ],
)
def test_a_response_format_the_server_cannot_read_fails_at_once_with_its_words_and_the_fix(kind, mode, status, says):
    sleep = RecordingSleep()
    with ScriptedTGI(kind=kind) as server:
        client = make_client(server, sleep, name="player_a", structured_output=mode)
        with pytest.raises(EndpointError) as excinfo:
            asyncio.run(chat_once(client, ask(json_schema=SCHEMA, role="judge")))
        sent, url = server.request_count, server.url

    err = excinfo.value
    assert sent == 1 and sleep.delays == [] and err.attempts == 1  # a validation error is not retried
    assert err.status == status and says in err.server_message and says in str(err)
    assert (err.role, err.endpoint) == ("judge", url)
    assert str(err).startswith(f"judge @ {url}: HTTP {status}")
    assert "Fix: set structured_output: auto" in str(err)
    assert 'File "' not in str(err)  # llama-cpp-python's server-side traceback is cut


def test_a_500_that_is_not_a_validation_error_is_still_retried(server):
    server.script(Fault.status(500, message="CUDA out of memory"))
    response = asyncio.run(chat_once(make_client(server), ask(json_schema=SCHEMA)))
    assert response.retries == 1 and server.request_count == 2


def test_legacy_mode_names_still_work_and_are_logged(server, caplog):
    caplog.set_level(logging.WARNING, logger="nanoflux.transport")
    client = make_client(server, structured_output="json_schema")
    assert client.structured_output == "openai"
    assert "'json_schema' is now called 'openai'" in caplog.text


# -- roles, attempts and tokens ------------------------------------------------------------------------------


def test_roles_sharing_a_client_are_named_in_retries_and_counted_per_role(server, caplog):
    caplog.set_level(logging.INFO, logger="nanoflux.transport")
    server.script(Fault.status(503), Fault.ok(), Fault.status(502))
    client = make_client(server, name="player_a")

    async def two_roles():
        async with client:
            await client.chat(ask("a", role="player_a"))
            await client.chat(ask("b", role="judge"))

    asyncio.run(two_roles())
    retries = [r.getMessage() for r in caplog.records if "attempt" in r.getMessage()]
    assert retries[0].startswith(f"player_a @ {server.url}: attempt 1/4 failed (503)")
    assert retries[1].startswith(f"judge @ {server.url}: attempt 1/4 failed (502)")
    # Every HTTP attempt counts (what the endpoint saw), per role too.
    assert client.stats.attempts == server.request_count == 4
    assert client.stats.attempts_by_role == {"player_a": 2, "judge": 2}


def test_tokens_are_counted_for_every_answer(server):
    server.responder = lambda body: Reply("ok", prompt_tokens=7, completion_tokens=5)
    client = make_client(server)

    async def three():
        async with client:
            return [await client.chat(ask()) for _ in range(3)]

    responses = asyncio.run(three())
    assert [(r.prompt_tokens, r.completion_tokens) for r in responses] == [(7, 5)] * 3
    assert (client.stats.prompt_tokens, client.stats.completion_tokens) == (21, 15)
    assert client.stats.answers_without_usage == 0


# -- secrets by opt-in ---------------------------------------------------------------------------------------


def test_a_planted_hf_token_never_reaches_a_server_that_is_not_hugging_face(server, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    client = EndpointClient(name="local", base_url=server.url, sleep=RecordingSleep())
    asyncio.run(chat_once(client, ask(json_schema=SCHEMA)))
    assert server.requests and {r.authorization for r in server.requests} == {None}  # probes included


def test_a_key_goes_to_a_custom_server_only_from_the_named_token_env(server, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_notThisOne")
    monkeypatch.setenv("VLLM_KEY", TOKEN)
    client = EndpointClient(name="local", base_url=server.url, token_env="VLLM_KEY", sleep=RecordingSleep())
    asyncio.run(chat_once(client, ask(json_schema=SCHEMA)))
    assert {r.authorization for r in server.requests} == {f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    ("base_url", "hugging_face"),
    [
        (None, True),  # a Hub model id: Inference Providers
        ("https://router.huggingface.co/v1", True),
        ("https://huggingface.co/api/models", True),
        ("https://x1y2.us-east-1.aws.endpoints.huggingface.cloud", True),
        ("https://org-space.hf.space", True),
        ("http://localhost:8080", False),
        ("https://huggingface.co.evil.example", False),
        ("https://nothuggingface.co", False),
        ("https://evil.example/huggingface.co", False),
        ("https://x.huggingface.cloud", False),  # only Inference Endpoints under huggingface.cloud
    ],
)
def test_the_hub_login_goes_only_to_hugging_face_hosts(monkeypatch, base_url, hugging_face):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert is_hugging_face_host(base_url) is hugging_face
    assert resolve_token(base_url, None) == (TOKEN if hugging_face else None)
    monkeypatch.setenv("ENDPOINT_KEY", "k-123")
    assert resolve_token(base_url, "ENDPOINT_KEY") == "k-123"  # named explicitly: sent wherever the recipe says


def test_a_key_in_the_base_url_query_is_used_but_never_logged(server, caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("httpx2", "nanoflux.transport"):  # whatever level an earlier `nanoflux` command left them at
        caplog.set_level(logging.DEBUG, logger=name)
    server.script(Fault.status(429, retry_after=0), Fault.status(400, message="nope"))
    retry = RetryPolicy(max_attempts=4, backoff_base=0.01, timeout=5.0)
    client = EndpointClient(
        name="judge", base_url=f"{server.url}/v1?api_key=QUERYsecret42", sleep=RecordingSleep(), retry=retry
    )

    with pytest.raises(EndpointError) as excinfo:
        asyncio.run(chat_once(client, ask(json_schema=SCHEMA)))

    assert all(r.path.endswith("?api_key=QUERYsecret42") for r in server.requests)  # probes and chats
    assert "structured_output auto" in caplog.text and "HTTP Request" in caplog.text  # detection and httpx2 logged
    for text in (caplog.text, str(excinfo.value), repr(client), excinfo.value.endpoint):
        assert "QUERYsecret42" not in text


# -- capacity-seeking concurrency ----------------------------------------------------------------------------


def test_roles_on_one_endpoint_share_one_limit_bounded_by_the_smallest_max_concurrency():
    with ScriptedTGI(latency=0.15) as server:
        a = make_client(server, name="player_a", model="m/a", max_concurrency=2)
        b = make_client(server, name="judge", model="m/b", max_concurrency=8)

        async def both():
            async with a, b:
                await asyncio.gather(*(c.chat(ask(f"{c.name}{i}")) for i in range(4) for c in (a, b)))
            return a.concurrency, b.concurrency

        limit_a, limit_b = asyncio.run(both())
    assert limit_a is limit_b and limit_a.ceiling == 2
    assert server.max_concurrent == 2


async def _saturate(client: EndpointClient, workers: int, seconds: float, every: float) -> list[tuple[float, int]]:
    """Keep `workers` requests wanting to go out for `seconds`; sample (elapsed, limit) every `every` seconds."""
    started = time.monotonic()
    samples: list[tuple[float, int]] = []

    async def worker(i: int) -> None:
        while time.monotonic() - started < seconds:
            await client.chat(ask(f"w{i}", max_tokens=16))

    async def sampler() -> None:
        while time.monotonic() - started < seconds:
            await asyncio.sleep(every)
            samples.append((time.monotonic() - started, client.concurrency.limit))

    async with client:
        await asyncio.gather(sampler(), *(worker(i) for i in range(workers)))
    return samples


@pytest.mark.parametrize(
    ("capacity", "latency", "seconds"),
    [
        (8, 0.2, 4.0),
        (64, 1.0, 12.0),
        # ~85 requests a second: what one Python process (client and server) keeps up on a shared 2-core machine.
        pytest.param(256, 3.0, 27.0, marks=pytest.mark.slow),
    ],
)
def test_the_limit_converges_to_the_server_slots_and_backs_off_on_429(capacity, latency, seconds):
    queue = capacity // 16  # TGI-style: past capacity + queue, "429 Model is overloaded"
    retry = RetryPolicy(max_attempts=100, backoff_base=0.01, backoff_max=0.05, timeout=60.0)
    with ScriptedTGI(
        responder=lambda body: Reply("ok", completion_tokens=10), latency=latency, capacity=capacity, queue_limit=queue
    ) as server:
        client = EndpointClient(
            name="seek", base_url=server.url, max_concurrency=4 * capacity, retry=retry, rng=random.Random(0)
        )
        samples = asyncio.run(_saturate(client, 3 * capacity, seconds, latency / 4))
        rejected = server.rejected

    within = max(1.0, 0.1 * capacity)  # 10% of the slots (one slot at 8)
    steady = sorted(limit for at, limit in samples if at > seconds * 0.6)
    median, final = steady[len(steady) // 2], samples[-1][1]
    assert abs(median - capacity) <= within and abs(final - capacity) <= within, (median, final, samples)
    stats = client.concurrency.stats
    assert rejected > 0 and stats.overloads > 0 and stats.decreases >= 1  # it found the edge and backed off
    assert stats.peak_in_flight > capacity + queue + 1 >= final  # over the edge in slow start, then back at it
    assert client.stats.failures == 0
