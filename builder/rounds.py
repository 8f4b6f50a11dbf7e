"""The round scheduler: who attacks whom, what each attack targets, and each example's way through its round.

In round r player A attacks and player B defends; in round r+1 they swap. Attacks go out concurrently; as each chunk
of them is done (in attack order) its questions are filtered for novelty, and the novel ones go on to the Defender and
the Judge's blind solve (at once), then the Judge's tools and verdict. Every role step is a task of `builder.roles`
run through the journal (`builder.calls`); each example is an `Example` whose row the roles' columns fill in.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from builder.calls import Caller, call_seed
from builder.config import BuildConfig
from builder.corpus import Corpus
from builder.novelty import NoveltyFilter, embed
from builder.roles import (
    Attack,
    Attacker,
    Defender,
    Defense,
    Judge,
    Outcome,
    PromptSet,
    Solution,
    Solver,
    Verdict,
    failed_judgement,
    feedback_text,
)
from builder.sandbox import SandboxLimits
from builder.screen import Screen
from builder.tools import ToolCall, answers_match, format_tool_results, lookup_tool, python_tool
from nanoflux.journal import Journal

logger = logging.getLogger(__name__)

# Calls each attack can take: attack, defense, the Judge's blind solve, the verdict (progress counts them).
CALLS_PER_ATTACK = 4
# Questions are embedded and checked for novelty in chunks of this many attacks, in attack order, as soon as a chunk's
# attacks are done. A fixed size (not the concurrency, which may change on resume) keeps every chunk, so every
# embedding and every novelty decision, the same on a resumed run.
NOVELTY_CHUNK = 8


@dataclass(frozen=True)
class Tasks:
    """The role tasks of a build, from its prompt set and answer format."""

    attacker: Attacker
    defender: Defender
    solver: Solver
    judge: Judge

    @classmethod
    def of(cls, prompts: PromptSet, config: BuildConfig) -> Tasks:
        fmt, n_options = config.answer_format, config.options
        return cls(
            Attacker(prompts, fmt, n_options),
            Defender(prompts, fmt, n_options),
            Solver(prompts, fmt, n_options),
            Judge(prompts, fmt),
        )


@dataclass
class Example:
    """One attack's way through its round: its journal key, who plays, each role's typed result, and the row.

    `row` holds the columns the round and the roles contributed so far; it is what the dataset keeps."""

    key: str
    """The journal key of the example's calls, `r<round>-a<attack>` (the row's `id`, a content hash, is set once
    the rounds are done)."""
    attacker: str
    defender: str
    attack: Attack
    row: dict[str, Any]
    defense: Defense | None = None
    solution: Solution | None = None
    verdict: Verdict | None = None


@dataclass
class Context:
    config: BuildConfig
    prompts: PromptSet
    tasks: Tasks
    corpus: Corpus
    caller: Caller
    examples: Journal
    tools: Journal
    limits: SandboxLimits
    embedder: Any
    novelty: NoveltyFilter
    screen: Screen | None = None
    """Decontaminates novel rows while they are defended and judged (None: decontamination is off)."""
    counts: Counter = field(default_factory=Counter)
    causes: Counter = field(default_factory=Counter)
    """Why calls failed for good, by role, model and error: the first line of a failed build's message."""

    def close(self) -> None:
        self.caller.progress.close()
        for journal in (self.caller.journal, self.examples, self.tools):
            journal.close()
        if self.screen is not None:
            self.screen.close()


async def _note(ctx: Context, attack_key: str, stage: str, **data: Any) -> None:
    """Journal an example's state change (once: a replayed stage is not written again)."""
    key = f"{attack_key}/{stage}"
    if key not in ctx.examples:
        await ctx.examples.aput({"key": key, "id": attack_key, "stage": stage, **data})


def players(round_index: int) -> tuple[str, str]:
    """(attacker, defender) of a round: player_a attacks in even rounds."""
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
        random.Random(call_seed(config.seed, f"targets/{round_index}/{column}")).shuffle(slots)
        return slots

    return list(
        zip(
            shares("capability", config.capabilities),
            shares("target_complexity", config.complexity_levels),
            strict=True,
        )
    )


async def run_rounds(ctx: Context) -> list[dict[str, Any]]:
    """Every round in turn (each attacks the Defender with what the earlier rounds showed); the rows, in order."""
    config, rows = ctx.config, []
    for r in range(config.rounds):
        ctx.caller.progress.set_description(f"round {r + 1}/{config.rounds}")
        new = await run_round(ctx, r, rows)
        rows += new
        logger.info(
            "Round %d (%s attacks): %d generated, %d novel, %d judged ok",
            r,
            players(r)[0],
            len(new),
            sum(x["novel"] for x in new),
            sum(row.get("judge_status") == "ok" for row in new),
        )
    return rows


async def run_round(ctx: Context, round_index: int, earlier: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Attack concurrently; as each chunk of attacks is done (in attack order), filter it for novelty and send its
    novel questions on to be defended and judged, while the later attacks are still out."""
    config, attacker_task = ctx.config, ctx.tasks.attacker
    attacker, defender = players(round_index)
    record = defender_record(earlier, defender)
    feedback = feedback_text(record, limit=config.feedback_examples, token_budget=config.feedback_tokens)
    targets = round_targets(config, round_index, record)

    async def attack(i: int) -> Example | None:
        capability, complexity = targets[i]
        key = f"r{round_index:02d}-a{i:04d}"
        messages = attacker_task.messages(capability=capability, complexity=complexity, feedback=feedback)
        outcome = await ctx.caller.ask(key, attacker, attacker_task, messages)
        if outcome.value is None:
            kind = Attacker.FAILURES[outcome.failure]
            ctx.counts[kind] += 1
            ctx.causes[f"the Attacker ({attacker}, {getattr(config, attacker).display_id()}): {outcome.error}"] += 1
            await _note(ctx, key, kind, error=outcome.error, raw=outcome.raw)
            ctx.caller.progress.update(CALLS_PER_ATTACK - 1)  # no defense or judgement will follow
            return None
        a: Attack = outcome.value
        await _note(ctx, key, "attacked", question=a.question, reference_answer=a.reference_answer)
        placement = {
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
        }
        return Example(key, attacker, defender, a, placement | attacker_task.columns(outcome))

    attacks = [asyncio.ensure_future(attack(i)) for i in range(config.attacks_per_round)]
    examples: list[Example] = []
    judging = []
    for start in range(0, len(attacks), NOVELTY_CHUNK):
        chunk = [example for example in await asyncio.gather(*attacks[start : start + NOVELTY_CHUNK]) if example]
        # The embedder runs in a thread, so the endpoints keep working meanwhile.
        vectors = await asyncio.to_thread(embed, ctx.embedder, [example.attack.question for example in chunk])
        notes = []
        for example, decision in zip(chunk, ctx.novelty.check(vectors), strict=True):
            example.row.update(novel=decision.novel, novelty_similarity=decision.nearest_similarity)
            notes.append(
                _note(ctx, example.key, "novelty", novel=decision.novel, similarity=decision.nearest_similarity)
            )
            if not decision.novel:
                ctx.counts["not_novel"] += 1
                ctx.caller.progress.update(CALLS_PER_ATTACK - 1)  # its defense and judgement will not happen
            elif ctx.screen is not None:
                # Checked in the background while it is defended and judged, so the build's end waits for the last
                # few rows only. The check needs the question and options alone; curation uses the candidates' results.
                ctx.screen.submit(example.row)
        await asyncio.gather(*notes)
        judging += [asyncio.ensure_future(defend_and_judge(ctx, e)) for e in chunk if e.row["novel"]]
        examples += chunk
    await asyncio.gather(*judging)
    return [example.row for example in examples]


async def defend_and_judge(ctx: Context, example: Example) -> None:
    """The Defender answers while the Judge solves the question blind; then the Judge's tools and verdict."""
    config, tasks, row = ctx.config, ctx.tasks, example.row
    defended, solved = await asyncio.gather(
        ctx.caller.ask(example.key, example.defender, tasks.defender, tasks.defender.messages(example.attack)),
        ctx.caller.ask(example.key, "judge", tasks.solver, tasks.solver.messages(example.attack)),
    )
    row.update(tasks.defender.columns(defended) | tasks.solver.columns(solved))
    example.defense = defended.value
    if example.defense is None:
        ctx.counts[f"defender_{row['defender_status']}"] += 1
    await _note(ctx, example.key, "defended", answer=row["defender_answer"], status=row["defender_status"])
    if solved.value is None:
        ctx.caller.progress.update(1)  # no verdict without the blind solve
        ctx.causes[f"the Judge's blind solve ({config.judge.display_id()}): {solved.error}"] += 1
        row.update(
            failed_judgement(
                Judge.FAILURES[solved.failure], error=f"judge blind solve {solved.error}", rationale=solved.raw[:2000]
            )
        )
    elif defended.failure == "endpoint":
        # The Defender never answered: that is no evidence about the question, so the example is not judged.
        ctx.caller.progress.update(1)
        row.update(failed_judgement("error", error=f"defender {defended.error}"))
    else:
        await judge(ctx, example, solved)
    await _note(
        ctx, example.key, "judged", judge_status=row["judge_status"], defender_correct=row.get("defender_correct")
    )


async def judge(ctx: Context, example: Example, solved: Outcome) -> None:
    """Tools first (the Judge's blind program in the sandbox, corpus lookup), then the verdict call; the Judge task
    maps the verdict into the row (where a tool gives a verdict it overrides the Judge's word)."""
    config, attack, row = ctx.config, example.attack, example.row
    example.solution = solution = solved.value
    row.update(Solver.solution_columns(solution))
    calls: list[ToolCall] = []
    verified: bool | None = None
    if solution.program and "python" in config.judge_tools:
        call = await _python(ctx, example.key, solution.program)
        calls.append(call)
        if config.answer_format == "number":
            if not call.ok:
                ctx.caller.progress.update(1)
                row.update(
                    failed_judgement("tool_error", tool_calls=calls, error=f"verification program: {call.error}")
                )
                return
            verified = answers_match(call.output, attack.reference_answer, "number")
    if "lookup" in config.judge_tools:
        calls.append(lookup_tool(ctx.corpus, attack.question))
    row["tool_calls"] = [c.to_dict() for c in calls]

    task = ctx.tasks.judge
    messages = task.messages(
        attack=attack, defense=example.defense, solution=solution, tool_results=format_tool_results(calls)
    )
    outcome = await ctx.caller.ask(example.key, "judge", task, messages)
    if outcome.value is None:
        ctx.causes[f"the Judge ({config.judge.display_id()}): {outcome.error}"] += 1
    example.verdict = outcome.value
    row.update(
        task.columns(
            outcome, solved=solved, attack=attack, defense=example.defense, verified=verified, tool_calls=calls
        )
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
