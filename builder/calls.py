"""Role calls through the journal: a role task's messages sent to its client, parsed, re-asked, never sent twice.

A finished call is journaled (its key, a fingerprint of what was asked, the reply and its tokens) before it counts, so
a killed build resumes where it stopped: a call whose record matches what is asked is answered from disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from builder.config import BuildConfig, RoleConfig
from builder.roles import Outcome, Rejected, Task, is_refusal, retry_messages
from nanoflux.chat import ChatClient, ChatRequest, ChatResponse, EndpointError
from nanoflux.journal import Journal


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def call_seed(base: int, key: str) -> int:
    """The seed of the call journaled under `key`: the recipe's seed and the key, hashed (a re-ask gets a new one)."""
    return int.from_bytes(hashlib.sha256(f"{base}/{key}".encode()).digest()[:4], "big") % (2**31)


@dataclass
class Stats:
    calls_sent: int = 0
    calls_replayed: int = 0
    tokens_sent: Counter = field(default_factory=Counter)
    """Prompt / completion tokens of the calls this run sent (not replayed): the run's record in runs.json."""
    endpoint_failures: Counter = field(default_factory=Counter)


class Caller:
    """Runs role calls through the journal: a finished call is answered from disk, never sent twice."""

    def __init__(self, config: BuildConfig, clients: dict[str, ChatClient], journal: Journal, progress):
        self.config = config
        self.clients = clients
        self.journal = journal
        self.progress = progress
        self.stats = Stats()

    async def _call(self, key: str, player: str, request: ChatRequest) -> ChatResponse:
        # What is asked, not who asks: `role` only labels logs and counters.
        asked = {k: v for k, v in dataclasses.asdict(request).items() if k != "role"}
        fingerprint = hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()
        record = self.journal.get(key)
        if record is not None and record["fingerprint"] == fingerprint:
            self.stats.calls_replayed += 1
            return ChatResponse(
                record["text"],
                record["prompt_tokens"],
                record["completion_tokens"],
                record["finish_reason"],
                record["retries"],
                {"finished_at": record["finished_at"]},
            )
        response = await self.clients[player].chat(request)
        finished_at = _now()
        await self.journal.aput(
            {
                "key": key,
                "fingerprint": fingerprint,
                "player": player,
                "text": response.text,
                "prompt_tokens": response.prompt_tokens,
                "completion_tokens": response.completion_tokens,
                "finish_reason": response.finish_reason,
                "retries": response.retries,
                "finished_at": finished_at,
            }
        )
        self.stats.calls_sent += 1
        self.stats.tokens_sent.update(prompt=response.prompt_tokens, completion=response.completion_tokens)
        response.meta["finished_at"] = finished_at
        return response

    async def ask(self, example_key: str, player: str, task: Task, messages: list[dict[str, str]]) -> Outcome:
        """One step of a role `task` for an example, played by `player`: its schema, parse and re-ask."""
        return await self.step(f"{example_key}/{task.step}", player, messages, task.schema(), task.parse, task.retry)

    async def step(
        self,
        key: str,
        player: str,
        messages: list[dict[str, str]],
        schema: dict[str, Any],
        parse,
        retry=retry_messages,
    ) -> Outcome:
        """One role step: call, parse; on an unusable answer ask again (`parse_retries`), with a new seed and the
        reason it was rejected (an out-of-range score, a missing key), so that even a temperature-0 role can fix it."""
        role: RoleConfig = getattr(self.config, player)
        outcome = Outcome()
        rejected = None
        try:
            for attempt in range(1 + self.config.parse_retries):
                if rejected is not None:
                    messages = retry(messages, outcome.raw, rejected)
                call_key = f"{key}/try{attempt}"
                request = ChatRequest(
                    messages=messages,
                    max_tokens=role.max_tokens,
                    temperature=role.temperature,
                    top_p=role.top_p,
                    seed=call_seed(self.config.seed, call_key),
                    json_schema=schema,
                    role=player,
                )
                response = await self._call(call_key, player, request)
                outcome.raw = response.text
                outcome.prompt_tokens += response.prompt_tokens
                outcome.completion_tokens += response.completion_tokens
                outcome.finished_at = response.meta["finished_at"]
                value = parse(response.text)
                if not isinstance(value, Rejected):
                    outcome.value = value
                    return outcome
                rejected = value
            outcome.failure = "refused" if is_refusal(outcome.raw) else "unparseable"
            outcome.error = f"{outcome.failure} answer: {rejected.reason} (finish_reason={response.finish_reason})"
        except EndpointError as err:
            self.stats.endpoint_failures[str(err.status or "network")] += 1
            outcome.failure, outcome.error = "endpoint", f"endpoint error: {err}"
        finally:
            self.progress.update(1)
        return outcome
