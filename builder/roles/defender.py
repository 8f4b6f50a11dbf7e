"""The Defender: answers the Attacker's question, reasoning first.

It owns its prompt (the domain's `defender.txt`: the question alone), the schema of its reply, the tolerant parse
into a `Defense`, and the Defender's columns of the row (its status, reasoning, answer and tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from builder.roles.attacker import Attack
from builder.roles.prompts import PromptSet
from builder.roles.task import (
    NO_JSON,
    Outcome,
    Rejected,
    Task,
    answer_schema,
    answer_value,
    extract_json,
    object_schema,
    reply_format,
    text_value,
)
from nanoflux.questions import question_text


@dataclass
class Defense:
    reasoning: str
    answer: str


def defense_schema(answer_format: str, n_options: int = 5) -> dict[str, Any]:
    return object_schema({"reasoning": {"type": "string"}, "answer": answer_schema(answer_format, n_options)})


def parse_defense(text: str, answer_format: str, n_options: int = 5) -> Defense | Rejected:
    data = extract_json(text)
    if data is None:
        return NO_JSON
    answer = answer_value(data.get("answer"), answer_format, n_options)
    if answer is None:
        return Rejected(f'"answer" is missing or not a valid answer (got {data.get("answer")!r})')
    return Defense(text_value(data.get("reasoning")) or "", answer)


def defense_messages(
    prompts: PromptSet, *, attack: Attack, answer_format: str, n_options: int
) -> list[dict[str, str]]:
    return prompts.defender.messages(
        reply_format=reply_format(defense_schema(answer_format, n_options)),
        question=question_text(attack.question, attack.options),
    )


@dataclass(frozen=True)
class Defender(Task):
    """The Defender's step: its messages, schema, parse, and the Defender's columns of the row."""

    prompts: PromptSet
    answer_format: str
    n_options: int

    step: ClassVar[str] = "defender"
    # `defender_status` of a step that failed for good.
    FAILURES: ClassVar[dict[str, str]] = {"endpoint": "error", "refused": "refused", "unparseable": "unparseable"}

    def messages(self, attack: Attack) -> list[dict[str, str]]:
        return defense_messages(
            self.prompts, attack=attack, answer_format=self.answer_format, n_options=self.n_options
        )

    def schema(self) -> dict[str, Any]:
        return defense_schema(self.answer_format, self.n_options)

    def read(self, text: str) -> Defense | Rejected:
        return parse_defense(text, self.answer_format, self.n_options)

    def columns(self, outcome: Outcome) -> dict[str, Any]:
        """A Defender that gave no usable answer is a format failure, not a wrong answer: it says nothing about how
        hard the question is, so the row records it apart (`defender_status`; defender_correct stays null) and
        curation never ranks it a failure."""
        defense: Defense | None = outcome.value
        return {
            "defender_prompt_tokens": outcome.prompt_tokens,
            "defender_completion_tokens": outcome.completion_tokens,
            "defender_status": "ok" if defense else self.FAILURES[outcome.failure],
            "defender_reasoning": defense.reasoning if defense else outcome.raw[:4000],
            "defender_answer": defense.answer if defense else None,
        }
