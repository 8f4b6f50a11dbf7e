"""The Judge's blind solve: the Judge answers the question before it sees the reference or the Attacker's explanation.

It owns its prompt (the domain's `solver.txt`), the schema of its reply (reasoning, a program for the sandbox that
numeric answers require, the answer), the tolerant parse into a `Solution`, and its columns of the row (the blind
answer, the verification program, the Judge's first tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from builder.roles.attacker import Attack
from builder.roles.defender import parse_defense
from builder.roles.prompts import PromptSet
from builder.roles.task import (
    REQUIRED_TEXT,
    Outcome,
    Rejected,
    Task,
    answer_schema,
    extract_json,
    object_schema,
    reply_format,
)
from nanoflux.questions import question_text


@dataclass
class Solution:
    """The Judge's blind solution: written before it sees the reference answer."""

    reasoning: str
    program: str
    answer: str


def solve_schema(answer_format: str, n_options: int = 5) -> dict[str, Any]:
    """The Judge's blind solution: reasoning, a program for the sandbox (required for numeric answers), its answer."""
    program = dict(REQUIRED_TEXT) if answer_format == "number" else {"type": "string"}  # optional for other formats
    return object_schema(
        {"reasoning": {"type": "string"}, "program": program, "answer": answer_schema(answer_format, n_options)}
    )


def parse_solution(text: str, answer_format: str, n_options: int = 5) -> Solution | Rejected:
    defense = parse_defense(text, answer_format, n_options)
    if isinstance(defense, Rejected):
        return defense
    program = (extract_json(text) or {}).get("program")
    program = program.strip() if isinstance(program, str) else ""
    if answer_format == "number" and not program:
        return Rejected('"program" must be a Python program that computes and prints the answer')
    return Solution(defense.reasoning, program, defense.answer)


def solve_messages(prompts: PromptSet, *, attack: Attack, answer_format: str, n_options: int) -> list[dict[str, str]]:
    """The Judge's blind solve: the question alone, never the reference or the Attacker's explanation."""
    return prompts.solver.messages(
        reply_format=reply_format(solve_schema(answer_format, n_options)),
        question=question_text(attack.question, attack.options),
    )


@dataclass(frozen=True)
class Solver(Task):
    """The Judge's blind-solve step: its messages, schema, parse, and its columns of the row."""

    prompts: PromptSet
    answer_format: str
    n_options: int

    step: ClassVar[str] = "judge-solve"

    def messages(self, attack: Attack) -> list[dict[str, str]]:
        return solve_messages(self.prompts, attack=attack, answer_format=self.answer_format, n_options=self.n_options)

    def schema(self) -> dict[str, Any]:
        return solve_schema(self.answer_format, self.n_options)

    def read(self, text: str) -> Solution | Rejected:
        return parse_solution(text, self.answer_format, self.n_options)

    @staticmethod
    def columns(outcome: Outcome) -> dict[str, Any]:
        """The Judge's tokens so far (the verdict's are added to them when it is asked)."""
        return {"judge_prompt_tokens": outcome.prompt_tokens, "judge_completion_tokens": outcome.completion_tokens}

    @staticmethod
    def solution_columns(solution: Solution) -> dict[str, Any]:
        """What the blind solve contributes once the question goes to judgement."""
        return {"judge_blind_answer": solution.answer, "verification_code": solution.program}
