"""The Judge's verdict: with the reference, both answers and its tools' results in view, it rules and scores.

It owns its prompt (the domain's `judge.txt` and `rubric.yaml`), the schema of its reply (flags, the rubric's scores,
complexity), the tolerant parse into a `Verdict`, and the verdict mapping: which source decides the question's
validity and the Defender's correctness (a tool wins over the Judge's word), and the judgement columns of the row.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from builder.roles.attacker import Attack
from builder.roles.defender import Defense
from builder.roles.prompts import PromptSet, Rubric
from builder.roles.solver import Solution
from builder.roles.task import NO_JSON, Outcome, Rejected, Task, extract_json, object_schema, reply_format, text_value
from builder.tools import ToolCall, answers_match
from nanoflux.questions import question_text


@dataclass
class Verdict:
    rationale: str
    question_valid: bool
    reference_correct: bool
    own_error: str
    """When its blind answer differed from the reference and it rules the reference right: its own mistake."""
    defender_correct: bool
    scores: dict[str, int]
    complexity: int

    @property
    def reasoning_quality(self) -> float:
        return sum(self.scores.values()) / len(self.scores)


def verdict_schema(rubric: Rubric) -> dict[str, Any]:
    score = {"type": "integer", "minimum": 1, "maximum": 5}
    properties: dict[str, Any] = {
        "rationale": {"type": "string"},
        "question_valid": {"type": "boolean"},
        "reference_correct": {"type": "boolean"},
        "own_error": {"type": "string"},
        "defender_correct": {"type": "boolean"},
    }
    properties.update({c.name: score for c in rubric.quality})
    properties["complexity"] = score
    return object_schema(properties)


def parse_verdict(text: str, rubric: Rubric) -> Verdict | Rejected:
    data = extract_json(text)
    if data is None:
        return NO_JSON
    for flag in ("question_valid", "defender_correct"):
        if not isinstance(data.get(flag), bool):
            return Rejected(f'"{flag}" must be true or false (got {data.get(flag)!r})')
    reference_correct = data.get("reference_correct", data["question_valid"])
    if not isinstance(reference_correct, bool):
        return Rejected(f'"reference_correct" must be true or false (got {reference_correct!r})')
    scores = {}
    for name in [c.name for c in rubric.quality] + ["complexity"]:
        value = data.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return Rejected(f'"{name}" must be an integer score 1-5 (got {value!r})')
        if not 1 <= value <= 5:
            return Rejected(f'"{name}" is {value!r}, outside the rubric\'s 1-5 range')
        scores[name] = int(round(value))
    complexity = scores.pop("complexity")
    own_error = text_value(data.get("own_error")) or ""
    return Verdict(
        text_value(data.get("rationale")) or "",
        data["question_valid"],
        reference_correct,
        own_error,
        data["defender_correct"],
        scores,
        complexity,
    )


def quality_level(score: float) -> int:
    """Band of a 1-5 judge score: L1 < 1.5 <= L2 < 2.5 <= L3 < 3.5 <= L4 < 4.5 <= L5 (the paper's L4 = 3.5-4.49)."""
    return min(5, max(1, int(score + 0.5)))


_PLAIN_NUMBER = re.compile(r"[-+−]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?%?|[-+]?\d+\s*/\s*\d+")


def is_numeric_answer(text: str) -> bool:
    """A reference answer for `answer_format: number` is a number and nothing else ('1,250', '-3.5', '2e6', '3/4')."""
    return bool(_PLAIN_NUMBER.fullmatch(text.strip()))


def verdict_messages(
    prompts: PromptSet, *, attack: Attack, defense: Defense | None, solution: Solution, tool_results: str
) -> list[dict[str, str]]:
    return prompts.judge.messages(
        reply_format=reply_format(verdict_schema(prompts.rubric)),
        question=question_text(attack.question, attack.options),
        reference_answer=attack.reference_answer,
        explanation=attack.explanation,
        blind_answer=solution.answer,
        blind_reasoning=solution.reasoning,
        defender_reasoning=defense.reasoning if defense else "(no usable answer)",
        defender_answer=defense.answer if defense else "(no usable answer)",
        tool_results=tool_results,
        rubric=prompts.rubric.text(),
    )


def reference_ruling(
    fmt: str, reference: str, verified: bool | None, blind_agrees: bool | None, verdict: Verdict
) -> tuple[bool, str]:
    """Is the reference answer right, and what decided it: the answer's format, the Judge's program (a tool), its
    blind answer, or (when its blind answer differed) its explicit ruling with an account of its own error."""
    if fmt == "number" and not is_numeric_answer(reference):
        return False, "format"
    if verified is not None:
        return verified, "python"
    if blind_agrees is None:
        return verdict.reference_correct, "judge"
    if blind_agrees:
        return True, "blind_solve"
    return verdict.reference_correct and bool(verdict.own_error), "judge_ruling"


def failed_judgement(
    status: str, *, tool_calls: Sequence[ToolCall] = (), error: str, rationale: str | None = None
) -> dict[str, Any]:
    """The judgement columns of an example that got no verdict (`judge_status` says why)."""
    return {
        "judge_status": status,
        "tool_calls": [c.to_dict() for c in tool_calls],
        "error": error,
        "judge_rationale": rationale,
    }


@dataclass(frozen=True)
class Judge(Task):
    """The Judge's verdict step: its messages, schema, parse, and the verdict mapping into the row's columns."""

    prompts: PromptSet
    answer_format: str

    step: ClassVar[str] = "judge"
    # `judge_status` of a Judge step (the blind solve or the verdict) that failed for good.
    FAILURES: ClassVar[dict[str, str]] = {"endpoint": "error", "refused": "refused", "unparseable": "parse_error"}

    def messages(
        self, *, attack: Attack, defense: Defense | None, solution: Solution, tool_results: str
    ) -> list[dict[str, str]]:
        return verdict_messages(
            self.prompts, attack=attack, defense=defense, solution=solution, tool_results=tool_results
        )

    def schema(self) -> dict[str, Any]:
        return verdict_schema(self.prompts.rubric)

    def read(self, text: str) -> Verdict | Rejected:
        return parse_verdict(text, self.prompts.rubric)

    def columns(
        self,
        outcome: Outcome,
        *,
        solved: Outcome,
        attack: Attack,
        defense: Defense | None,
        verified: bool | None,
        tool_calls: Sequence[ToolCall],
    ) -> dict[str, Any]:
        """The judgement columns: the Judge's tokens (blind solve and verdict), then the verdict mapped (or why
        there is none)."""
        columns: dict[str, Any] = {
            "judge_prompt_tokens": solved.prompt_tokens + outcome.prompt_tokens,
            "judge_completion_tokens": solved.completion_tokens + outcome.completion_tokens,
            "judged_at": outcome.finished_at,
        }
        if outcome.value is None:
            return columns | failed_judgement(
                self.FAILURES[outcome.failure],
                tool_calls=tool_calls,
                error=f"judge {outcome.error}",
                rationale=outcome.raw[:2000],
            )
        return columns | self.verdict_columns(outcome.value, attack, defense, solved.value, verified)

    def verdict_columns(
        self, verdict: Verdict, attack: Attack, defense: Defense | None, solution: Solution, verified: bool | None
    ) -> dict[str, Any]:
        """Where a tool gives a verdict it overrides the Judge's word, and the row records which source decided."""
        fmt = self.answer_format
        blind_agrees = answers_match(solution.answer, attack.reference_answer, fmt)
        reference_ok, decided_by = reference_ruling(fmt, attack.reference_answer, verified, blind_agrees, verdict)
        check = answers_match(defense.answer, attack.reference_answer, fmt) if defense else None
        return {
            "judge_status": "ok",
            "judge_rationale": verdict.rationale,
            "judge_defender_correct": verdict.defender_correct,
            "defender_correct": None if defense is None else (verdict.defender_correct if check is None else check),
            "correctness_decided_by": None if defense is None else ("judge" if check is None else "answer_check"),
            "judge_blind_agrees": blind_agrees,
            "judge_reference_correct": verdict.reference_correct,
            "judge_own_error": verdict.own_error or None,
            "reference_verified": verified,
            "question_valid": verdict.question_valid and reference_ok,
            "validity_decided_by": decided_by,
            "judge_scores": [{"name": name, "score": score} for name, score in verdict.scores.items()],
            "reasoning_quality": verdict.reasoning_quality,
            "quality_level": quality_level(verdict.reasoning_quality),
            "judge_complexity": verdict.complexity,
        }
