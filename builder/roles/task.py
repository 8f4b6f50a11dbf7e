"""What every role step shares: the `Task` shape, its result (`Outcome`, `Rejected`), the tolerant reading of replies.

A task, as in distilabel, owns its prompt, its JSON schema and a tolerant parser that returns the typed value or a
`Rejected` (why it could not be used, with the raw text kept) instead of raising, so that a bad answer becomes data,
not a crash, and a re-ask can say what was wrong. Sending the request is not a task's business: `builder/calls.py`
runs a task over a `ChatClient` and journals each call.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nanoflux.questions import LETTERS

# strict=False: raw control characters (a newline) inside a string are accepted. llama-cpp-python's JSON-schema grammar
# allows them (its `char` rule is `[^"\\]`), so a schema-constrained reply can hold them; strict JSON would refuse it.
_DECODER = json.JSONDecoder(strict=False)

# A refusal is data (judge_status="refused"), not a parse error.
_REFUSAL = re.compile(
    r"\b(I can(?:no|')t|I cannot|I'm sorry|I am sorry|I won't|as an AI|I am unable|I'm unable)\b", re.I
)


@dataclass(frozen=True)
class Rejected:
    """Why a reply could not be used; said back to the role when it is asked again."""

    reason: str
    raw: str = field(default="", compare=False, repr=False)
    """The reply as the role wrote it (set by `Task.parse`)."""


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


class Task:
    """A role step: `messages(...)` to send, `schema()` of the reply, `parse(text)` -> value or Rejected, `retry` to
    ask again, and the row columns it contributes (`columns`, per role). `step` names its calls in the journal."""

    step: ClassVar[str]

    def schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def read(self, text: str) -> Any:
        """The typed value of a reply, or Rejected (without the raw text: `parse` adds it)."""
        raise NotImplementedError

    def parse(self, text: str) -> Any:
        value = self.read(text)
        return dataclasses.replace(value, raw=text) if isinstance(value, Rejected) else value

    def reply_format(self) -> str:
        return reply_format(self.schema())

    def retry(self, messages: list[dict[str, str]], raw: str, rejected: Rejected) -> list[dict[str, str]]:
        return retry_messages(messages, raw, rejected)


# --- schemas ---------------------------------------------------------------------------------------------


# A text the parser requires to be non-empty. Said in the schema too, so that a server that constrains decoding to it
# cannot return `""` where a question, an option or an answer must be: llama.cpp's grammar otherwise allows it, and the
# 135M model, shown weak feedback, filled the keys of half its attacks with empty strings.
REQUIRED_TEXT: dict[str, Any] = {"type": "string", "minLength": 1}


def answer_schema(answer_format: str, n_options: int) -> dict[str, Any]:
    if answer_format == "choice":
        return {"type": "string", "enum": list(LETTERS[:n_options])}
    return dict(REQUIRED_TEXT)


def object_schema(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


_EXAMPLES = {"string": "...", "boolean": True, "integer": 4}


def reply_format(schema: dict[str, Any]) -> str:
    """The reply's keys and a minimal example, spelled out in the prompt, so that a server that ignores the schema
    (or a role without structured output) still gets a parseable answer."""
    example: dict[str, Any] = {}
    for name, spec in schema["properties"].items():
        if "enum" in spec:
            example[name] = spec["enum"][0]
        elif spec["type"] == "array":
            example[name] = ["..."] * spec.get("minItems", 1)
        else:
            example[name] = _EXAMPLES[spec["type"]]
    keys = ", ".join(f'"{name}"' for name in schema["properties"])
    return f"Reply with one JSON object with exactly these keys: {keys}. For example:\n{json.dumps(example)}"


# --- tolerant reading ------------------------------------------------------------------------------------


NO_JSON = Rejected("the reply holds no JSON object")


def extract_json(text: str) -> dict[str, Any] | None:
    """The first JSON object in `text` (code fences, prose around it, trailing commas and raw newlines in strings
    tolerated), else None."""
    text = re.sub(r"```(?:json)?", "", text)
    for candidate in (text, re.sub(r",\s*([}\]])", r"\1", text)):
        position = candidate.find("{")
        while position != -1:
            try:
                value, _ = _DECODER.raw_decode(candidate, position)
            except json.JSONDecodeError:
                value = None
            if isinstance(value, dict):
                return value
            position = candidate.find("{", position + 1)
    return None


def is_refusal(text: str) -> bool:
    return extract_json(text) is None and bool(_REFUSAL.search(text))


def text_value(value: Any) -> str | None:
    """A non-empty text (a number as its text), stripped; else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def normalize_choice(value: str | None, n_options: int = 5) -> str | None:
    """'B', '(b)', 'B) Aspirin', 'Option B' -> 'B'; anything else, or a letter past the options -> None."""
    if value is None:
        return None
    match = re.match(r"^\s*(?:option\s*)?\(?([A-Ja-j])\)?(?:[\s.:)\-]|$)", value, re.I)
    letter = match.group(1).upper() if match else None
    return letter if letter and LETTERS.index(letter) < n_options else None


def answer_value(value: Any, answer_format: str, n_options: int) -> str | None:
    """An answer in the recipe's format: an option letter for `choice`, else a non-empty text."""
    text = text_value(value)
    return normalize_choice(text, n_options) if answer_format == "choice" else text


def retry_messages(messages: list[dict[str, str]], raw: str, rejected: Rejected) -> list[dict[str, str]]:
    """Ask again after an unusable reply: the reply, what was wrong with it, and the request to fix it. (A role at
    temperature 0 would otherwise return the same bytes.)"""
    return [
        *messages,
        {"role": "assistant", "content": raw[:4000]},
        {
            "role": "user",
            "content": (
                f"That reply cannot be used: {rejected.reason}. Reply again with the corrected JSON object only."
            ),
        },
    ]
