"""EndpointClient against a REAL llama.cpp server: llama-cpp-python's `python -m llama_cpp.server` serving the packaged
SmolLM2-135M GGUF on loopback (no download). What the scripted server imitates, checked against the real thing:
`auto` detects it, the schema is honoured, the shapes it cannot read fail at once with its own words and the fix.

Slow (a real model on CPU): a session-scoped server, few requests, small max_tokens. Needs the server's extras
(`llama-cpp-python[server]`: fastapi, uvicorn, sse-starlette, starlette-context, pydantic-settings). The server is
tests/llama_server.py's, one per session, shared with the real builds of test_real_builds.py.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from builder import roles
from builder.calls import Caller
from builder.config import BuildConfig, RoleConfig
from builder.roles import Rejected, attack_schema, parse_attack
from nanoflux.chat import ChatRequest, EndpointError
from nanoflux.journal import Journal
from nanoflux.progress import Progress
from nanoflux.retries import RetryPolicy
from nanoflux.transport import EndpointClient
from tests.llama_server import RecordingProxy, llama_server  # noqa: F401 (the session's server, shared)

pytestmark = pytest.mark.slow

ATTACK_SCHEMA = attack_schema("choice", 4)
ATTACK_PROMPT = (
    "Write one difficult multiple-choice question about pharmacology for medical students, with exactly 4 answer "
    "options. Reply with a JSON object with the keys question, options (a list of 4 option texts), explanation "
    "(one short sentence) and reference_answer (the letter A, B, C or D of the correct option)."
)


def _client(url: str, mode: str = "auto") -> EndpointClient:
    return EndpointClient(
        name="player_a",
        base_url=url,
        structured_output=mode,
        retry=RetryPolicy(max_attempts=3, backoff_base=0.1, timeout=300),
    )


def _attack(seed: int, max_tokens: int = 256) -> ChatRequest:
    messages = [{"role": "user", "content": ATTACK_PROMPT}]
    return ChatRequest(
        messages=messages,
        max_tokens=max_tokens,
        temperature=0.7,
        seed=seed,
        json_schema=ATTACK_SCHEMA,
        role="player_a",
    )


async def _attacks(client: EndpointClient, n: int) -> tuple[list[object], list[object]]:
    """n attacks as a build asks them: a reply that cannot be used is asked once more (`parse_retries: 1`) with the
    reason and a new seed. The first replies and the final results."""
    first, final = [], []
    async with client:
        for i in range(n):
            request = _attack(1000 + i)
            text = (await client.chat(request)).text
            first.append(parsed := parse_attack(text, "choice", 4))
            if isinstance(parsed, Rejected):
                retry = ChatRequest(
                    messages=roles.retry_messages(request.messages, text, parsed),
                    max_tokens=request.max_tokens,
                    temperature=0.7,
                    seed=2000 + i,
                    json_schema=ATTACK_SCHEMA,
                    role="player_a",
                )
                parsed = parse_attack((await client.chat(retry)).text, "choice", 4)
            final.append(parsed)
    return first, final


def test_auto_detects_llama_cpp_and_the_attack_schema_is_honoured(llama_server):
    client = _client(llama_server)
    first, final = asyncio.run(_attacks(client, 10))

    assert (client.server.server, client.structured_output_mode) == ("llama-cpp-python", "llama_cpp")
    # The grammar holds the JSON's shape; what the 135M model puts in it (a runaway question cut at max_tokens, blank
    # option texts) can still be unusable, and the build asks once more. This bare prompt is not the build's: the
    # issue's bar (>= 90 % of a build's attacks parse) is checked on real builds in test_real_builds.py. Here, on 10
    # seeds: 7-9 usable at the first reply and 8-10 after the retry, measured on two machines.
    rate = sum(not isinstance(p, Rejected) for p in final) / len(final)
    assert rate >= 0.8, [p.reason for p in final if isinstance(p, Rejected)]
    assert sum(not isinstance(p, Rejected) for p in first) >= 7, [p.reason for p in first if isinstance(p, Rejected)]
    retries = sum(isinstance(p, Rejected) for p in first)
    assert (
        client.stats.attempts == 10 + retries
        and client.stats.completion_tokens > 0
        and client.stats.answers_without_usage == 0
    )


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

    async def ask() -> list[str]:
        async with client:
            return [(await client.chat(_attack(1000 + i))).text for i in range(2)]

    texts = asyncio.run(ask())
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)
    assert client.structured_output_mode == "none" and client.stats.failures == 0


def test_llama_cpp_does_not_enforce_integer_ranges_so_the_judge_re_asks_with_a_new_seed(llama_server, tmp_path):
    # llama-cpp-python's JSON-schema grammar ignores minimum/maximum (its converter has a TODO for them): the Judge's
    # 1-5 scores are only checked after parsing. Asked to copy scores of 9, the model may, and the grammar lets it.
    rubric = roles.load_prompts("medical").rubric
    schema = roles.verdict_schema(rubric)
    assert schema["properties"]["complexity"] == {"type": "integer", "minimum": 1, "maximum": 5}
    scores = {c.name: 9 for c in rubric.quality}
    verdict = {
        "rationale": "ok",
        "question_valid": True,
        "reference_correct": True,
        "own_error": "",
        "defender_correct": True,
        **scores,
        "complexity": 9,
    }
    messages = [
        {"role": "user", "content": f"Copy this JSON object exactly, with the same numbers:\n{json.dumps(verdict)}"}
    ]
    config = BuildConfig(judge=RoleConfig(base_url=llama_server, temperature=0.0, max_tokens=160), parse_retries=1)
    journal = Journal(tmp_path / "calls.jsonl")
    with RecordingProxy(llama_server) as proxy:
        client = EndpointClient(name="judge", base_url=proxy.url, retry=RetryPolicy(max_attempts=2, timeout=300))
        caller = Caller(config, {"judge": client}, journal, Progress(2, desc="calls"))

        async def step():
            async with client:
                return await caller.step(
                    "x/judge", "judge", messages, schema, lambda text: roles.parse_verdict(text, rubric)
                )

        outcome = asyncio.run(step())
    journal.close()
    first, *again = [journal.records[key] for key in ("x/judge/try0", "x/judge/try1") if key in journal.records]
    rejected = roles.parse_verdict(first["text"], rubric)
    assert isinstance(rejected, Rejected) and "outside the rubric's 1-5 range" in rejected.reason, first[
        "text"
    ]  # the grammar let 9 through
    # Re-asked once, with a new seed (a temperature-0 role would otherwise repeat itself) and the reason.
    asked = proxy.chat_requests()
    assert len(again) == 1 and len(asked) == 2 and asked[0].body["seed"] != asked[1].body["seed"]
    assert asked[0].body["temperature"] == 0.0 and rejected.reason in asked[1].body["messages"][-1]["content"]
    # Whatever it answers then, no out-of-range score is ever kept.
    assert outcome.value is None or all(
        1 <= s <= 5 for s in [*outcome.value.scores.values(), outcome.value.complexity]
    )
