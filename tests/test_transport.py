"""EndpointClient against the scripted loopback TGI: real HTTP, no mocks of the client."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import traceback
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from builder.chat import ChatRequest, EndpointError
from builder.transport import EndpointClient, RetryPolicy, backoff_delay, parse_retry_after
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
        # huggingface_hub 2.x rewrites an OpenAI json_schema response_format into TGI's grammar form
        # for URL targets (HFInferenceConversational); this pins what actually goes on the wire.
        ("json_schema", {"type": "json_object", "value": SCHEMA}),
        ("json", {"type": "json", "value": SCHEMA}),
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


@pytest.mark.parametrize("mode", ["json_schema", "json", "none"])
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
    caplog.set_level(logging.WARNING, logger="builder.transport")
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
    [record] = [r for r in caplog.records if r.name == "builder.transport"]
    assert record.levelno == logging.WARNING
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
    ids=lambda v: v.kind + str(v.status_code) + ("-close" if v.premature_close else "") if isinstance(v, Fault) else "",
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


def test_rejected_response_format_fails_fast_and_suggests_structured_output_none(server):
    server.script(*[Fault.status(422, message="Grammar is not supported")] * 3)
    client = make_client(server, structured_output="json")

    with pytest.raises(EndpointError) as excinfo:
        asyncio.run(chat_once(client, ask(json_schema=SCHEMA)))

    assert "structured_output: none" in str(excinfo.value)
    assert excinfo.value.status == 422
    assert server.request_count == 1


def test_offline_mode_fails_fast_for_non_loopback_urls(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    sleep = RecordingSleep()
    client = EndpointClient(name="remote", base_url="http://tgi.nanoflux.invalid", sleep=sleep)
    with pytest.raises(EndpointError, match="HF_HUB_OFFLINE") as excinfo:
        asyncio.run(chat_once(client, ask()))
    assert excinfo.value.attempts == 1
    assert sleep.delays == []


# -- concurrency -----------------------------------------------------------------------------------


def test_concurrency_is_bounded_and_requests_overlap():
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
    assert repr(client) == "EndpointClient(name='x', target='https://tgi.example/v1', structured_output='json_schema')"


def test_missing_base_url_and_model_is_a_value_error_naming_both():
    with pytest.raises(ValueError) as excinfo:
        EndpointClient(name="nowhere", token=TOKEN)
    message = str(excinfo.value)
    assert "base_url" in message and "model" in message
    assert TOKEN not in message


def test_unknown_structured_output_mode_is_rejected():
    with pytest.raises(ValueError, match="structured_output"):
        EndpointClient(name="x", base_url="http://127.0.0.1:9", structured_output="xml")
