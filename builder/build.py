"""Build a NanoFlux dataset: Attacker / Defender / tool-augmented Judge rounds, novelty filtering, curation.

Usage:
    nanoflux build --config configs/local.yaml                          # embedded default, CPU, no network
    nanoflux build --config configs/medical.yaml                        # endpoints named in the recipe
    nanoflux build --config configs/medical.yaml --rounds 3 --target_size 150 --judge.base_url http://host:8080

In round r player A attacks and player B defends; in round r+1 they swap. Each attack: the Attacker, shown how the
player it now attacks did on earlier valid questions, writes a question aimed at a capability and complexity chosen
from that player's failure rates (`targeting`), with reference answer and annotated explanation; the novelty filter
drops near-duplicates; the Defender answers while the Judge solves the question blind (for numbers it writes the
verification program that runs in the sandbox); then the Judge sees the reference, both answers and the tool results
and grades. Tool verdicts override the Judge's word, and each row records what decided. Every finished call is
journaled, so a killed build resumes where it stopped (`--fresh` starts over).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from builder import publish, roles, runfolder, sandbox
from builder.config import BuildConfig, RoleConfig, build_config
from builder.corpus import Corpus, packaged_corpus
from builder.curation import curate, eligible
from builder.dataset import DEFENDER_STATUSES, JUDGE_STATUSES, assign_ids, sft_messages, write_rows
from builder.decontamination import Reference, decontaminate, load_reference, write_report
from builder.novelty import NoveltyFilter, embed, load_embedder, read_bank
from builder.sandbox import SandboxLimits
from builder.tools import ToolCall, answers_match, format_tool_results, lookup_tool, python_tool
from nanoflux.chat import ChatClient, ChatRequest, ChatResponse, EndpointError
from nanoflux.errors import NanoFluxError
from nanoflux.journal import Journal
from nanoflux.progress import Progress
from nanoflux.recipe import to_dict
from nanoflux.runfolder import claim, fingerprint, hold, write_atomic
from nanoflux.runfolder import release as release_folder

logger = logging.getLogger(__name__)


class BuildError(NanoFluxError, RuntimeError):
    """A build that produced nothing useful: the message gives the cause (role, model, the server's own words) and
    the fix. What was journaled is kept, so a re-run after the fix resumes."""


# Fields that change how requests are sent, not what they return: changing them does not invalidate a journal.
TRANSPORT_FIELDS = ("max_concurrency", "timeout", "max_attempts", "token_env", "structured_output")
# Where the result goes, not what it is.
PUBLISH_FIELDS = ("output_dir", "push_to_hub", "hub_dir", "private")
# Curation runs after the rounds, on the journaled rows (nothing in a round depends on it): changing it re-curates a
# finished build without a single new call.
CURATION_FIELDS = ("curation", "target_size", "decontamination")
OUTPUT_FILES = (
    "run.json",
    "calls.jsonl",
    "examples.jsonl",
    "tools.jsonl",
    "config.yaml",
    "summary.json",
    "curated.jsonl",
    "pool.jsonl",
    "contaminated.jsonl",
)
OUTPUT_DIRS = ("data", "pool")
# Calls each attack can take: attack, defense, the Judge's blind solve, the verdict (progress counts them).
CALLS_PER_ATTACK = 4
# Questions are embedded and checked for novelty in chunks of this many attacks, in attack order, as soon as a chunk's
# attacks are done. A fixed size (not the concurrency, which may change on resume) keeps every chunk, so every
# embedding and every novelty decision, the same on a resumed run.
NOVELTY_CHUNK = 8


# --- the run's identity ----------------------------------------------------------------------------------


def recipe_fingerprint(config: BuildConfig, prompt_hashes: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """sha256 of everything that decides what the rounds generate (not where it goes, how it is sent or curated)."""
    data = to_dict(config)
    for name in (*PUBLISH_FIELDS, *CURATION_FIELDS):
        data.pop(name)
    data["prompt_hashes"] = prompt_hashes
    # Benchmark questions in the novelty bank change which attacks are judged: then (only) it is part of the identity.
    data["benchmarks_in_novelty_bank"] = config.decontamination.enabled and config.decontamination.seed_novelty_bank
    for role in ("player_a", "player_b", "judge"):
        for name in TRANSPORT_FIELDS:
            data[role].pop(name)
    return fingerprint(data), data


def prepare_output_dir(config: BuildConfig, prompts: roles.PromptSet, fresh: bool) -> Path:
    """Create or reopen the output dir, locked for this run (one writer per folder: the kernel's `hold`; main releases
    it with `release_folder`); refuse to resume a different recipe unless `fresh` (the kernel's `claim`). State files
    are written atomically; a damaged run.json raises DamagedStateFile (path and fix)."""
    output_dir = Path(config.output_dir)
    _, identity = recipe_fingerprint(config, prompts.hashes())
    hold(output_dir, "build")  # FolderBusy at once when another process builds or publishes here

    def discard() -> None:
        for name in OUTPUT_FILES:
            (output_dir / name).unlink(missing_ok=True)
        for name in OUTPUT_DIRS:
            for path in sorted((output_dir / name).glob("**/*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()
        runfolder.clear(output_dir)

    try:
        if claim(
            output_dir,
            identity,
            fresh=fresh,
            discard=discard,
            what="a build",
            damaged_fix=runfolder.doctor_fix(output_dir),
        ):
            logger.info("Resuming the build in %s", output_dir)
        write_atomic(output_dir / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False).encode())
    except BaseException:
        release_folder(output_dir)
        raise
    return output_dir


# --- clients ---------------------------------------------------------------------------------------------


def make_clients(config: BuildConfig) -> dict[str, ChatClient]:
    """One client per role; roles with the same endpoint and transport settings (or all on the embedded model)
    share one, so that its concurrency bound and its batching apply to all of their requests together."""
    shared: dict[tuple, ChatClient] = {}
    clients = {}
    for name in ("player_a", "player_b", "judge"):
        role: RoleConfig = getattr(config, name)
        key = (
            role.backend,
            role.base_url,
            role.model,
            role.structured_output,
            *(getattr(role, f) for f in TRANSPORT_FIELDS),
        )
        if role.backend == "embedded":
            key = ("embedded", role.model)
        if key not in shared:
            shared[key] = _make_client(name, role)
        clients[name] = shared[key]
    return clients


def _make_client(name: str, role: RoleConfig) -> ChatClient:
    if role.backend == "embedded":
        # The packaged GGUF under a managed llama.cpp server on loopback (one per process and model), reached through
        # the same EndpointClient as any endpoint; at most llama_engine.SLOTS requests in flight (it serves one at a time).
        from builder.llama_engine import engine_client

        return engine_client(
            name,
            role.model,
            max_concurrency=role.max_concurrency,
            timeout=role.timeout,
            max_attempts=role.max_attempts,
        )
    from nanoflux.transport import EndpointClient, RetryPolicy

    return EndpointClient(
        name=name,
        base_url=role.base_url,
        model=role.model,
        token_env=role.token_env,
        max_concurrency=role.max_concurrency,
        retry=RetryPolicy(max_attempts=role.max_attempts, timeout=role.timeout),
        structured_output=role.structured_output,
    )


# --- journaled calls -------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _seed(base: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{base}/{key}".encode()).digest()[:4], "big") % (2**31)


@dataclass
class Outcome:
    """What one role step produced: a parsed value (or None), the raw text, tokens, and what went wrong."""

    value: Any = None
    raw: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finished_at: str | None = None
    failure: str | None = None
    """None when parsed; else `endpoint` (failed for good), `refused` or `unparseable` (why: `error`)."""
    error: str | None = None


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

    async def step(self, key: str, player: str, messages: list[dict[str, str]], schema: dict, parse) -> Outcome:
        """One role step: call, parse; on an unusable answer ask again (`parse_retries`), with a new seed and the
        reason it was rejected (an out-of-range score, a missing key), so that even a temperature-0 role can fix it."""
        role: RoleConfig = getattr(self.config, player)
        outcome = Outcome()
        rejected = None
        try:
            for attempt in range(1 + self.config.parse_retries):
                if rejected is not None:
                    messages = roles.retry_messages(messages, outcome.raw, rejected)
                call_key = f"{key}/try{attempt}"
                request = ChatRequest(
                    messages=messages,
                    max_tokens=role.max_tokens,
                    temperature=role.temperature,
                    top_p=role.top_p,
                    seed=_seed(self.config.seed, call_key),
                    json_schema=schema,
                    role=player,
                )
                response = await self._call(call_key, player, request)
                outcome.raw = response.text
                outcome.prompt_tokens += response.prompt_tokens
                outcome.completion_tokens += response.completion_tokens
                outcome.finished_at = response.meta["finished_at"]
                value = parse(response.text)
                if not isinstance(value, roles.Rejected):
                    outcome.value = value
                    return outcome
                rejected = value
            outcome.failure = "refused" if roles.is_refusal(outcome.raw) else "unparseable"
            outcome.error = f"{outcome.failure} answer: {rejected.reason} (finish_reason={response.finish_reason})"
        except EndpointError as err:
            self.stats.endpoint_failures[str(err.status or "network")] += 1
            outcome.failure, outcome.error = "endpoint", f"endpoint error: {err}"
        finally:
            self.progress.update(1)
        return outcome


# --- one round -------------------------------------------------------------------------------------------


@dataclass
class Context:
    config: BuildConfig
    prompts: roles.PromptSet
    corpus: Corpus
    caller: Caller
    examples: Journal
    tools: Journal
    limits: SandboxLimits
    embedder: Any
    novelty: NoveltyFilter
    counts: Counter = field(default_factory=Counter)
    causes: Counter = field(default_factory=Counter)
    """Why calls failed for good, by role, model and error: the first line of a failed build's message."""


async def _note(ctx: Context, attack_key: str, stage: str, **data: Any) -> None:
    """Journal an example's state change (once: a replayed stage is not written again)."""
    key = f"{attack_key}/{stage}"
    if key not in ctx.examples:
        await ctx.examples.aput({"key": key, "id": attack_key, "stage": stage, **data})


def _players(round_index: int) -> tuple[str, str]:
    return ("player_a", "player_b") if round_index % 2 == 0 else ("player_b", "player_a")


def defender_record(rows: list[dict[str, Any]], defender: str) -> list[dict[str, Any]]:
    """What is known about `defender`: its judged answers to valid questions, from every earlier round it defended."""
    return [
        row
        for row in rows
        if row["defender"] == defender
        and row.get("judge_status") == "ok"
        and row["question_valid"]
        and row.get("defender_correct") is not None
    ]


def failure_rates(record: list[dict[str, Any]], column: str, values: list[Any]) -> dict[Any, float]:
    """Smoothed failure rate per value of `column`: (failures + 1) / (answers + 2), 0.5 when nothing is known."""
    return {
        value: (
            (sum(not r["defender_correct"] for r in record if r[column] == value) + 1)
            / (sum(r[column] == value for r in record) + 2)
        )
        for value in values
    }


def _allocate(weights: dict[Any, float], total: int) -> list[Any]:
    """`total` slots split in proportion to `weights` (largest remainder; ties to the earlier value)."""
    mass = sum(weights.values())
    quotas = {value: total * w / mass for value, w in weights.items()}
    counts = {value: int(q) for value, q in quotas.items()}
    by_remainder = sorted(weights, key=lambda v: -(quotas[v] - counts[v]))
    for value in by_remainder[: total - sum(counts.values())]:
        counts[value] += 1
    return [value for value in weights for _ in range(counts[value])]


def round_targets(config: BuildConfig, round_index: int, record: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(capability, complexity) for each attack of a round.

    `round_robin` cycles through both lists. `adaptive` gives each capability and each complexity level a share of
    the attacks in proportion to the Defender's smoothed failure rate on it, mixed with an even share
    (`exploration`) so that nothing stops being probed; the two lists are shuffled with a seed of the round, so the
    same journal always gives the same targets.
    """
    n = config.attacks_per_round
    if config.targeting == "round_robin":
        n_caps, n_levels = len(config.capabilities), len(config.complexity_levels)
        first = round_index * n
        return [
            (config.capabilities[g % n_caps], config.complexity_levels[(g // n_caps) % n_levels])
            for g in range(first, first + n)
        ]

    def shares(column: str, values: list[Any]) -> list[Any]:
        rates = failure_rates(record, column, values)
        total = sum(rates.values())
        mix = config.exploration
        slots = _allocate({v: (1 - mix) * rates[v] / total + mix / len(values) for v in values}, n)
        random.Random(_seed(config.seed, f"targets/{round_index}/{column}")).shuffle(slots)
        return slots

    return list(zip(shares("capability", config.capabilities), shares("target_complexity", config.complexity_levels)))


async def run_round(ctx: Context, round_index: int, earlier: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Attack concurrently; as each chunk of attacks is done (in attack order), filter it for novelty and send its
    novel questions on to be defended and judged, while the later attacks are still out."""
    config = ctx.config
    attacker, defender = _players(round_index)
    record = defender_record(earlier, defender)
    feedback = roles.feedback_text(record, limit=config.feedback_examples, token_budget=config.feedback_tokens)
    targets = round_targets(config, round_index, record)
    fmt, n_options = config.answer_format, config.options

    async def attack(i: int) -> dict[str, Any] | None:
        capability, complexity = targets[i]
        # The journal key of the attack's calls (the row's `id`, a content hash, is set once the rounds are done).
        example_id = f"r{round_index:02d}-a{i:04d}"
        messages = roles.attack_messages(
            ctx.prompts,
            capability=capability,
            complexity=complexity,
            feedback=feedback,
            answer_format=fmt,
            n_options=n_options,
        )
        outcome = await ctx.caller.step(
            f"{example_id}/attacker",
            attacker,
            messages,
            roles.attack_schema(fmt, n_options),
            lambda t: roles.parse_attack(t, fmt, n_options),
        )
        if outcome.value is None:
            kind = {"endpoint": "attack_error", "refused": "attack_refused", "unparseable": "attack_parse_error"}[
                outcome.failure
            ]
            ctx.counts[kind] += 1
            ctx.causes[f"the Attacker ({attacker}, {getattr(config, attacker).display_id()}): {outcome.error}"] += 1
            await _note(ctx, example_id, kind, error=outcome.error, raw=outcome.raw)
            ctx.caller.progress.update(CALLS_PER_ATTACK - 1)  # no defense or judgement will follow
            return None
        a: roles.Attack = outcome.value
        await _note(ctx, example_id, "attacked", question=a.question, reference_answer=a.reference_answer)
        return {
            "attack_key": example_id,
            "round": round_index,
            "attack_index": i,
            "domain": config.domain,
            "capability": capability,
            "target_complexity": complexity,
            "attacker": attacker,
            "defender": defender,
            "attacker_model": getattr(config, attacker).display_id(),
            "defender_model": getattr(config, defender).display_id(),
            "judge_model": config.judge.display_id(),
            "question": a.question,
            "options": a.options,
            "reference_answer": a.reference_answer,
            "explanation": a.explanation,
            "attacker_prompt_tokens": outcome.prompt_tokens,
            "attacker_completion_tokens": outcome.completion_tokens,
            "created_at": outcome.finished_at,
            "messages": sft_messages(
                a.question, a.explanation, a.reference_answer, options=a.options, answer_format=fmt
            ),
            "_attack": a,
        }

    attacks = [asyncio.ensure_future(attack(i)) for i in range(config.attacks_per_round)]
    attacked: list[dict[str, Any]] = []
    judging = []
    for start in range(0, len(attacks), NOVELTY_CHUNK):
        chunk = [row for row in await asyncio.gather(*attacks[start : start + NOVELTY_CHUNK]) if row]
        # The embedder runs in a thread, so the endpoints keep working meanwhile.
        vectors = await asyncio.to_thread(embed, ctx.embedder, [row["question"] for row in chunk])
        notes = []
        for row, decision in zip(chunk, ctx.novelty.check(vectors)):
            row["novel"], row["novelty_similarity"] = decision.novel, decision.nearest_similarity
            notes.append(
                _note(ctx, row["attack_key"], "novelty", novel=decision.novel, similarity=decision.nearest_similarity)
            )
            if not decision.novel:
                ctx.counts["not_novel"] += 1
                ctx.caller.progress.update(CALLS_PER_ATTACK - 1)  # its defense and judgement will not happen
        await asyncio.gather(*notes)
        judging += [asyncio.ensure_future(defend_and_judge(ctx, row)) for row in chunk if row["novel"]]
        attacked += chunk
    await asyncio.gather(*judging)
    for row in attacked:
        row.pop("_attack")
    return attacked


async def defend_and_judge(ctx: Context, row: dict[str, Any]) -> None:
    """The Defender answers while the Judge solves the question blind; then the Judge's tools and verdict."""
    config, attack = ctx.config, row["_attack"]
    fmt, n_options = config.answer_format, config.options
    defended, solved = await asyncio.gather(
        ctx.caller.step(
            f"{row['attack_key']}/defender",
            row["defender"],
            roles.defense_messages(ctx.prompts, attack=attack, answer_format=fmt, n_options=n_options),
            roles.defense_schema(fmt, n_options),
            lambda t: roles.parse_defense(t, fmt, n_options),
        ),
        ctx.caller.step(
            f"{row['attack_key']}/judge-solve",
            "judge",
            roles.solve_messages(ctx.prompts, attack=attack, answer_format=fmt, n_options=n_options),
            roles.solve_schema(fmt, n_options),
            lambda t: roles.parse_solution(t, fmt, n_options),
        ),
    )
    row["defender_prompt_tokens"], row["defender_completion_tokens"] = (
        defended.prompt_tokens,
        defended.completion_tokens,
    )
    row["judge_prompt_tokens"], row["judge_completion_tokens"] = solved.prompt_tokens, solved.completion_tokens
    defense: roles.Defense | None = defended.value
    # A Defender that gave no usable answer is a format failure, not a wrong answer: it says nothing about how hard
    # the question is, so the row records it apart (defender_correct stays null) and curation never ranks it a failure.
    row["defender_status"] = "ok" if defense else {"endpoint": "error"}.get(defended.failure, defended.failure)
    row["defender_reasoning"] = defense.reasoning if defense else defended.raw[:4000]
    row["defender_answer"] = defense.answer if defense else None
    if not defense:
        ctx.counts[f"defender_{row['defender_status']}"] += 1
    await _note(ctx, row["attack_key"], "defended", answer=row["defender_answer"], status=row["defender_status"])
    if solved.value is None:
        ctx.caller.progress.update(1)  # no verdict without the blind solve
        status = {"endpoint": "error", "refused": "refused", "unparseable": "parse_error"}[solved.failure]
        ctx.causes[f"the Judge's blind solve ({config.judge.display_id()}): {solved.error}"] += 1
        _set_judgement(row, status, error=f"judge blind solve {solved.error}", rationale=solved.raw[:2000])
    elif defended.failure == "endpoint":
        # The Defender never answered: that is no evidence about the question, so the example is not judged.
        ctx.caller.progress.update(1)
        _set_judgement(row, "error", error=f"defender {defended.error}")
    else:
        await judge(ctx, row, attack, defense, solved.value)
    await _note(
        ctx,
        row["attack_key"],
        "judged",
        judge_status=row["judge_status"],
        defender_correct=row.get("defender_correct"),
    )


async def judge(
    ctx: Context, row: dict[str, Any], attack: roles.Attack, defense: roles.Defense | None, solution: roles.Solution
) -> None:
    """Tools first (the Judge's blind program in the sandbox, corpus lookup, answer checks), then the verdict call;
    where a tool gives a verdict it overrides the Judge's word, and the row records which source decided."""
    config, fmt = ctx.config, ctx.config.answer_format
    calls: list[ToolCall] = []
    verified: bool | None = None
    row["judge_blind_answer"] = solution.answer
    row["verification_code"] = solution.program
    if solution.program and "python" in config.judge_tools:
        call = await _python(ctx, row["attack_key"], solution.program)
        calls.append(call)
        if fmt == "number":
            if not call.ok:
                ctx.caller.progress.update(1)
                _set_judgement(row, "tool_error", tool_calls=calls, error=f"verification program: {call.error}")
                return
            verified = answers_match(call.output, attack.reference_answer, "number")
    if "lookup" in config.judge_tools:
        calls.append(lookup_tool(ctx.corpus, attack.question))
    row["tool_calls"] = [c.to_dict() for c in calls]

    messages = roles.verdict_messages(
        ctx.prompts, attack=attack, defense=defense, solution=solution, tool_results=format_tool_results(calls)
    )
    outcome = await ctx.caller.step(
        f"{row['attack_key']}/judge",
        "judge",
        messages,
        roles.verdict_schema(ctx.prompts.rubric),
        lambda t: roles.parse_verdict(t, ctx.prompts.rubric),
    )
    row["judge_prompt_tokens"] += outcome.prompt_tokens
    row["judge_completion_tokens"] += outcome.completion_tokens
    row["judged_at"] = outcome.finished_at
    verdict: roles.Verdict | None = outcome.value
    if verdict is None:
        status = {"endpoint": "error", "refused": "refused", "unparseable": "parse_error"}[outcome.failure]
        ctx.causes[f"the Judge ({config.judge.display_id()}): {outcome.error}"] += 1
        _set_judgement(row, status, tool_calls=calls, error=f"judge {outcome.error}", rationale=outcome.raw[:2000])
        return
    blind_agrees = answers_match(solution.answer, attack.reference_answer, fmt)
    reference_ok, decided_by = reference_ruling(fmt, attack.reference_answer, verified, blind_agrees, verdict)
    check = answers_match(defense.answer, attack.reference_answer, fmt) if defense else None
    row.update(
        judge_status="ok",
        judge_rationale=verdict.rationale,
        judge_defender_correct=verdict.defender_correct,
        defender_correct=None if defense is None else (verdict.defender_correct if check is None else check),
        correctness_decided_by=None if defense is None else ("judge" if check is None else "answer_check"),
        judge_blind_agrees=blind_agrees,
        judge_reference_correct=verdict.reference_correct,
        judge_own_error=verdict.own_error or None,
        reference_verified=verified,
        question_valid=verdict.question_valid and reference_ok,
        validity_decided_by=decided_by,
        judge_scores=[{"name": name, "score": score} for name, score in verdict.scores.items()],
        reasoning_quality=verdict.reasoning_quality,
        quality_level=roles.quality_level(verdict.reasoning_quality),
        judge_complexity=verdict.complexity,
    )


def reference_ruling(
    fmt: str, reference: str, verified: bool | None, blind_agrees: bool | None, verdict: roles.Verdict
) -> tuple[bool, str]:
    """Is the reference answer right, and what decided it: the answer's format, the Judge's program (a tool), its
    blind answer, or (when its blind answer differed) its explicit ruling with an account of its own error."""
    if fmt == "number" and not roles.is_numeric_answer(reference):
        return False, "format"
    if verified is not None:
        return verified, "python"
    if blind_agrees is None:
        return verdict.reference_correct, "judge"
    if blind_agrees:
        return True, "blind_solve"
    return verdict.reference_correct and bool(verdict.own_error), "judge_ruling"


def _set_judgement(
    row: dict[str, Any], status: str, *, tool_calls: list[ToolCall] = (), error: str, rationale: str | None = None
) -> None:
    row.update(
        judge_status=status, tool_calls=[c.to_dict() for c in tool_calls], error=error, judge_rationale=rationale
    )


async def _python(ctx: Context, example_id: str, code: str) -> ToolCall:
    """Sandboxed run of the Judge's verification program, journaled like a role call (it can take seconds)."""
    key = f"{example_id}/python"
    record = ctx.tools.get(key)
    if record is not None and record["input"] == code:
        return ToolCall(record["tool"], record["input"], record["output"], record["ok"], record["error"])
    call = await asyncio.to_thread(python_tool, code, ctx.limits)
    await ctx.tools.aput({"key": key, **call.to_dict()})
    return call


# --- summary ---------------------------------------------------------------------------------------------


def endpoint_report(clients: dict[str, ChatClient]) -> list[dict[str, Any]]:
    """Per endpoint client (roles on one endpoint share one): what serves it, the structured-output mode sent, the
    HTTP attempts it made (retries included), tokens, and what the adaptive concurrency limit did."""
    report = []
    for client in {id(c): c for c in clients.values()}.values():
        stats = getattr(client, "stats", None)
        if stats is None or not hasattr(stats, "attempts"):  # the embedded model: no HTTP
            continue
        server, limit = getattr(client, "server", None), getattr(client, "concurrency", None)
        report.append(
            {
                "roles": sorted(name for name, c in clients.items() if c is client),
                "server": dataclasses.asdict(server) if server else None,
                "attempts": stats.attempts,
                "attempts_by_role": dict(stats.attempts_by_role),
                "retries": stats.retries,
                "errors_by_kind": dict(stats.errors_by_kind),
                "probes": stats.probes,
                "prompt_tokens": stats.prompt_tokens,
                "completion_tokens": stats.completion_tokens,
                "concurrency": dataclasses.asdict(limit.stats) if limit is not None else None,
            }
        )
    return report


def summarize(
    config: BuildConfig, rows: list[dict[str, Any]], kept: list[dict[str, Any]], ctx: Context, wall_s: float
) -> dict[str, Any]:
    endpoints = endpoint_report(ctx.caller.clients)
    judged = [r for r in rows if r.get("judge_status")]
    statuses = Counter(r["judge_status"] for r in judged)
    tokens: dict[str, dict[str, int]] = {}
    for role in ("attacker", "defender", "judge"):
        tokens[role] = {
            kind: sum(r.get(f"{role}_{kind}_tokens") or 0 for r in rows) for kind in ("prompt", "completion")
        }
    per_round = []
    for r in range(config.rounds):
        in_round = [row for row in rows if row["round"] == r]
        answered = defender_record(in_round, _players(r)[1])
        per_round.append(
            {
                "round": r,
                "attacker": _players(r)[0],
                "generated": len(in_round),
                "novel": sum(row["novel"] for row in in_round),
                "judged_ok": sum(row.get("judge_status") == "ok" for row in in_round),
                "valid": sum(bool(row.get("question_valid")) for row in in_round),
                "kept": sum(row["round"] == r for row in kept),
                "defender_failure_rate": (
                    (sum(not row["defender_correct"] for row in answered) / len(answered)) if answered else None
                ),
                "targets": dict(Counter(row["capability"] for row in in_round)),
            }
        )
    return {
        "attacks": config.rounds * config.attacks_per_round,
        "attack_errors": ctx.counts["attack_error"],
        "attack_parse_errors": ctx.counts["attack_parse_error"],
        "attack_refusals": ctx.counts["attack_refused"],
        "generated": len(rows),
        "not_novel": ctx.counts["not_novel"],
        "novel": len(rows) - ctx.counts["not_novel"],
        "defender_status": {
            status: sum(r.get("defender_status") == status for r in rows) for status in DEFENDER_STATUSES
        },
        "judge_status": {status: statuses.get(status, 0) for status in JUDGE_STATUSES},
        "judged_ok": statuses.get("ok", 0),
        "valid": sum(bool(r.get("question_valid")) for r in rows),
        "validity_decided_by": dict(Counter(r["validity_decided_by"] for r in rows if r.get("validity_decided_by"))),
        "kept": len(kept),
        "target_size": config.target_size,
        "per_round": per_round,
        "tokens": tokens,
        "calls_answered": ctx.caller.stats.calls_sent,
        "calls_sent": sum(e["attempts"] for e in endpoints) if endpoints else ctx.caller.stats.calls_sent,
        "calls_replayed": ctx.caller.stats.calls_replayed,
        "endpoints": endpoints,
        "retries": sum(rec.get("retries", 0) for rec in ctx.caller.journal.records.values()),
        "endpoint_failures": dict(ctx.caller.stats.endpoint_failures),
        "prompt_hashes": ctx.prompts.hashes(),
        "wall_time_s": round(wall_s, 2),
    }


def check_outcome(config: BuildConfig, summary: dict[str, Any], causes: Counter) -> None:
    """Raise BuildError when the build produced nothing useful: more than `max_failed_share` of the attacks failed,
    or no example was judged, or nothing was kept. The summary is already written, and the journal keeps every
    finished call."""
    failed = summary["attack_errors"] + summary["attack_parse_errors"] + summary["attack_refusals"]
    cause = f" Most common cause ({causes.most_common(1)[0][1]}x): {causes.most_common(1)[0][0]}." if causes else ""
    if failed > config.max_failed_share * summary["attacks"]:
        raise BuildError(
            f"{failed} of {summary['attacks']} attacks failed (max_failed_share {config.max_failed_share}).{cause}"
            " Fix: check the role's endpoint, model and structured_output, then re-run: finished calls are not sent"
            " again."
        )
    if summary["judged_ok"] == 0:
        raise BuildError(
            f"no example was judged (judge status {summary['judge_status']}, defender"
            f" {summary['defender_status']}).{cause} Fix: check the Judge's endpoint and model (the examples' `error`"
            " column in pool.jsonl says what failed)."
        )
    if summary["kept"] == 0:
        raise BuildError(
            f"nothing was kept: {summary['generated']} generated, {summary['not_novel']} near-duplicates (of this"
            f" build, the novelty bank or earlier versions), {summary['judged_ok']} judged, {summary['valid']} valid,"
            f" 0 in the curation bands (quality_levels {config.curation.quality_levels}, require_valid"
            f" {config.curation.require_valid}). The pool is in pool.jsonl. Fix: more rounds or attacks, stronger"
            " roles, or another curation (re-curating sends no call: e.g. --curation.quality_levels [3,4])."
        )


def log_summary(summary: dict[str, Any], output_dir: Path) -> None:
    s = summary
    logger.info(
        "Build finished in %.1fs: %d attacks -> %d generated -> %d novel -> %d judged ok -> %d valid -> %d kept"
        " (target %d)",
        s["wall_time_s"],
        s["attacks"],
        s["generated"],
        s["novel"],
        s["judged_ok"],
        s["valid"],
        s["kept"],
        s["target_size"],
    )
    logger.info(
        "Defender answers %s; validity decided by %s", s["defender_status"], s["validity_decided_by"] or "nothing"
    )
    decontamination = s.get("decontamination") or {}
    if decontamination.get("checked"):
        found = decontamination["contaminated"]
        logger.info(
            "Decontamination against %s: %d of %d candidate rows dropped %s",
            decontamination["eval_recipe"],
            found["rows"],
            decontamination["rows_checked"],
            found,
        )
    logger.info(
        "Attack errors %d, unparseable %d, refused %d; not novel %d; judge status %s",
        s["attack_errors"],
        s["attack_parse_errors"],
        s["attack_refusals"],
        s["not_novel"],
        s["judge_status"],
    )
    logger.info(
        "Calls sent %d (HTTP attempts to endpoints, retries included; answered %d), replayed from journal %d, retries"
        " %d, endpoint failures %s",
        s["calls_sent"],
        s["calls_answered"],
        s["calls_replayed"],
        s["retries"],
        s["endpoint_failures"] or "none",
    )
    for endpoint in s["endpoints"]:
        server = endpoint["server"] or {}
        logger.info(
            "Endpoint of %s: %s, structured output %s (%s); peak concurrency %s",
            "/".join(endpoint["roles"]),
            server.get("server", "?"),
            server.get("mode", "?"),
            server.get("evidence", "?"),
            (endpoint["concurrency"] or {}).get("peak_in_flight", "?"),
        )
    for role, t in s["tokens"].items():
        logger.info("Tokens %-8s in %7d  out %7d", role, t["prompt"], t["completion"])
    logger.info("Dataset: %s (curated.jsonl, data/train-*.parquet; every example in pool/)", output_dir)


# --- main ------------------------------------------------------------------------------------------------


def main(config: BuildConfig, *, fresh: bool = False) -> dict[str, Any]:
    """Run (or resume) a build and write the curated dataset; returns the summary."""
    from builder.preflight import validate_inputs

    validate_inputs(config)  # every input readable and usable before any request or output file
    started = time.perf_counter()
    prompts = roles.load_prompts(config.domain, config.prompts)
    corpus = Corpus.load(config.corpus or packaged_corpus(config.domain))
    earlier: list[str] = []
    if config.push_to_hub:
        # Pre-flight before any compute: the repo is writable, and its latest version joins the novelty bank.
        with publish.open_target(config.hub_dir) as api:
            previous = publish.preflight(api, config.push_to_hub, private=config.private)
        earlier = [row["question"] for row in previous.rows or []]
    # Pre-flight: untrusted programs run only under real confinement (bubblewrap or the kernel's layers), decided
    # before any call is sent; and the benchmarks to decontaminate against must load.
    sandbox_mode = sandbox.require_confinement(config.sandbox) if "python" in config.judge_tools else None
    reference: Reference | None = None
    if config.decontamination.enabled:
        reference = load_reference(config.decontamination.recipe_for(config.domain))
        if config.decontamination.seed_novelty_bank:
            earlier += reference.texts
    output_dir = prepare_output_dir(config, prompts, fresh)
    try:
        run_index = runfolder.begin_run(
            output_dir
        )  # this run's record: a resume adds its time and tokens to the earlier runs'
        logger.info("Loading the novelty embedder %s", config.novelty.model)
        embedder = load_embedder(config.novelty.model)
        bank = (read_bank(config.novelty.bank) if config.novelty.bank else []) + earlier
        novelty = NoveltyFilter(config.novelty.threshold, bank=embed(embedder, bank) if bank else None)
        clients = make_clients(config)

        calls = Journal(output_dir / "calls.jsonl")
        progress = Progress(config.rounds * config.attacks_per_round * CALLS_PER_ATTACK, desc="calls")
        ctx = Context(
            config=config,
            prompts=prompts,
            corpus=corpus,
            caller=Caller(config, clients, calls, progress),
            examples=Journal(output_dir / "examples.jsonl"),
            tools=Journal(output_dir / "tools.jsonl"),
            limits=SandboxLimits(
                wall_seconds=config.sandbox.wall_seconds,
                cpu_seconds=config.sandbox.cpu_seconds,
                memory_bytes=config.sandbox.memory_mb * 1024**2,
                allow_unconfined=config.sandbox.allow_unconfined,
            ),
            embedder=embedder,
            novelty=novelty,
        )

        async def run_all() -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = []
            for r in range(config.rounds):
                progress.set_description(f"round {r + 1}/{config.rounds}")
                new = await run_round(ctx, r, rows)
                rows += new
                ok = sum(row.get("judge_status") == "ok" for row in new)
                logger.info(
                    "Round %d (%s attacks): %d generated, %d novel, %d judged ok",
                    r,
                    _players(r)[0],
                    len(new),
                    sum(x["novel"] for x in new),
                    ok,
                )
            return rows

        try:
            rows = asyncio.run(run_all())
        finally:
            progress.close()
            for journal in (calls, ctx.examples, ctx.tools):
                journal.close()

        assign_ids(
            rows, recipe_fingerprint(config, prompts.hashes())[0]
        )  # stable: the same journal gives the same ids
        # Only rows curation could keep are checked: a contaminated row must not take a slot a clean one could have had.
        candidates = [row for row in rows if eligible(row, config.curation)]
        checked = decontaminate(
            candidates, config.decontamination, domain=config.domain, embedder=embedder, reference=reference
        )
        contaminated_ids = {row["id"] for row in checked.contaminated}
        kept = curate([row for row in rows if row["id"] not in contaminated_ids], config.curation, config.target_size)
        write_rows(rows, output_dir / "pool" / "pool.parquet", output_dir / "pool.jsonl")
        write_rows(kept, output_dir / "data" / "train-00000-of-00001.parquet", output_dir / "curated.jsonl")
        write_report(checked.contaminated, output_dir / "contaminated.jsonl")
        summary = summarize(config, rows, kept, ctx, time.perf_counter() - started)
        summary["decontamination"] = checked.summary()
        summary["sandbox"] = sandbox_mode
        summary["novelty_bank_version"] = (
            previous.tag if config.push_to_hub else None
        )  # earlier questions it was novel against
        runs = runfolder.end_run(
            output_dir,
            run_index,
            wall_time_s=summary["wall_time_s"],
            calls_sent=ctx.caller.stats.calls_sent,
            tokens={kind: ctx.caller.stats.tokens_sent[kind] for kind in ("prompt", "completion")},
        )
        summary["runs"], summary["build"] = runs, runfolder.run_totals(runs)
        write_atomic(output_dir / "summary.json", json.dumps(summary, indent=2).encode())
        log_summary(summary, output_dir)
        check_outcome(config, summary, ctx.causes)
        if config.push_to_hub:
            # The build is safe on disk; if this fails, `nanoflux publish <output_dir>` retries without rebuilding.
            # publish() reads the repo's latest version again: it may have moved on during a long build.
            with publish.open_target(config.hub_dir) as api:
                release = publish.publish(
                    output_dir, config.push_to_hub, api=api, private=config.private, reference=reference
                )
            summary["release"] = dataclasses.asdict(release) if release else None
        return summary
    finally:
        release_folder(output_dir)  # the folder's lock, taken by prepare_output_dir, is held for the whole run


def command(args: argparse.Namespace, overrides: list[str]) -> None:
    """`nanoflux build [--config RECIPE] [--fresh] [--field value ...]`."""
    main(build_config(args.config, overrides), fresh=args.fresh)
