"""The Attacker: writes a question aimed at a capability and complexity, with its reference answer and explanation.

It owns its prompt (the domain's `attacker.txt`, with feedback on how the Defender it faces did earlier), the schema
of its reply, the tolerant parse into an `Attack`, and the question columns of the row (stem, options, reference,
explanation, the SFT `messages`, its tokens).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from builder.roles.prompts import PromptSet
from builder.roles.task import (
    NO_JSON,
    REQUIRED_TEXT,
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
from nanoflux.questions import LETTERS

# Characters per token, to keep feedback within a token budget without a tokenizer for every endpoint's model.
CHARS_PER_TOKEN = 4


@dataclass
class Attack:
    question: str
    """The stem (multiple choice: without its options)."""
    options: list[str]
    """Multiple choice: the option texts, A first; empty otherwise."""
    explanation: str
    reference_answer: str


def attack_schema(answer_format: str, n_options: int = 5) -> dict[str, Any]:
    """The Attacker's answer. A multiple-choice question keeps its stem and its options apart, so the dataset can put
    it to a model exactly as evaluation does; the explanation comes before the reference answer so the model reasons
    first."""
    properties: dict[str, Any] = {"question": dict(REQUIRED_TEXT)}
    if answer_format == "choice":
        properties["options"] = {
            "type": "array",
            "items": dict(REQUIRED_TEXT),
            "minItems": n_options,
            "maxItems": n_options,
        }
    properties["explanation"] = dict(REQUIRED_TEXT)
    properties["reference_answer"] = answer_schema(answer_format, n_options)
    return object_schema(properties)


_INLINE_OPTION = re.compile(r"\(([A-J])\)\s*")


def _options(data: dict[str, Any], question: str) -> tuple[str, list[str]]:
    """The options as a list of texts: from `options` (a list, or a mapping {A: text}), else from the stem when a
    model wrote them inline as `(A) x (B) y`, labels in order."""
    value = data.get("options")
    if isinstance(value, dict):
        value = [value[k] for k in sorted(value, key=str)]
    if isinstance(value, list):
        texts = [text_value(v) for v in value]
        return question, [re.sub(r"^\(?[A-J][.)]\s+", "", t) for t in texts if t]
    labels = list(_INLINE_OPTION.finditer(question))
    if len(labels) < 2 or "".join(m.group(1) for m in labels) != LETTERS[: len(labels)]:
        return question, []
    bounds = [m.start() for m in labels[1:]] + [len(question)]
    return question[: labels[0].start()].strip(), [
        question[m.end() : end].strip() for m, end in zip(labels, bounds, strict=True)
    ]


def parse_attack(text: str, answer_format: str, n_options: int = 5) -> Attack | Rejected:
    data = extract_json(text)
    if data is None:
        return NO_JSON
    question, explanation = text_value(data.get("question")), text_value(data.get("explanation"))
    if not question:
        return Rejected('"question" is missing or empty')
    if not explanation:
        return Rejected('"explanation" is missing or empty')
    options: list[str] = []
    if answer_format == "choice":
        question, options = _options(data, question)
        if len(options) != n_options:
            return Rejected(f'"options" must list exactly {n_options} option texts (got {len(options)})')
    answer = answer_value(data.get("reference_answer"), answer_format, n_options)
    if not answer:
        expected = f"one letter {LETTERS[0]}-{LETTERS[n_options - 1]}" if answer_format == "choice" else "the answer"
        return Rejected(f'"reference_answer" must be {expected} (got {data.get("reference_answer")!r})')
    return Attack(question, options, explanation, answer)


def attack_messages(
    prompts: PromptSet, *, capability: str, complexity: int, feedback: str, answer_format: str, n_options: int
) -> list[dict[str, str]]:
    return prompts.attacker.messages(
        reply_format=reply_format(attack_schema(answer_format, n_options)),
        capability=capability,
        complexity=str(complexity),
        complexity_guide=prompts.rubric.complexity_levels[complexity],
        feedback=feedback,
        n_options=str(n_options),
        letter_list=", ".join(LETTERS[: n_options - 1]) + f" or {LETTERS[n_options - 1]}",
    )


def feedback_text(results: list[dict[str, Any]], *, limit: int, token_budget: int) -> str:
    """What the Attacker learns about the player it attacks: that player's judged answers to valid questions from
    earlier rounds (its failures first, the most recent first), with the reference and the Judge's rationale."""
    usable = [r for r in results if r.get("question_valid") and r.get("defender_correct") is not None]
    if limit == 0 or not usable:
        return ""
    ordered = sorted(usable, key=lambda r: (r["defender_correct"], -r["round"], -r["attack_index"]))
    lines = [
        "How the Defender you face did on earlier valid questions (target what it gets wrong; do not repeat these):"
    ]
    budget = token_budget * CHARS_PER_TOKEN - len(lines[0])
    for row in ordered[:limit]:
        outcome = "FAILED" if not row["defender_correct"] else "solved"
        line = (
            f"- [{outcome}, {row['capability']}] {_clip(row['question'], 240)} | Defender answered: "
            f"{_clip(row['defender_answer'] or '', 40)}; reference: {_clip(row['reference_answer'], 40)} | "
            f"Judge: {_clip(row.get('judge_rationale') or '', 160)}"
        )
        if len(line) > budget:
            break
        lines.append(line)
        budget -= len(line) + 1
    return "\n".join(lines) + "\n" if len(lines) > 1 else ""


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Attacker(Task):
    """The Attacker's step: its messages, schema, parse, and the question columns of the row."""

    prompts: PromptSet
    answer_format: str
    n_options: int

    step: ClassVar[str] = "attacker"
    # Why an attack failed for good, as the build counts it and journals the example's stage.
    FAILURES: ClassVar[dict[str, str]] = {
        "endpoint": "attack_error",
        "refused": "attack_refused",
        "unparseable": "attack_parse_error",
    }

    def messages(self, *, capability: str, complexity: int, feedback: str) -> list[dict[str, str]]:
        return attack_messages(
            self.prompts,
            capability=capability,
            complexity=complexity,
            feedback=feedback,
            answer_format=self.answer_format,
            n_options=self.n_options,
        )

    def schema(self) -> dict[str, Any]:
        return attack_schema(self.answer_format, self.n_options)

    def read(self, text: str) -> Attack | Rejected:
        return parse_attack(text, self.answer_format, self.n_options)

    def columns(self, outcome: Outcome) -> dict[str, Any]:
        """The row's question columns, from a parsed attack."""
        # Imported here: `datasets` (which builder.dataset loads) takes a second, and the roles stay cheap to import.
        from builder.dataset import sft_messages

        a: Attack = outcome.value
        return {
            "question": a.question,
            "options": a.options,
            "reference_answer": a.reference_answer,
            "explanation": a.explanation,
            "attacker_prompt_tokens": outcome.prompt_tokens,
            "attacker_completion_tokens": outcome.completion_tokens,
            "created_at": outcome.finished_at,
            "messages": sft_messages(
                a.question, a.explanation, a.reference_answer, options=a.options, answer_format=self.answer_format
            ),
        }
