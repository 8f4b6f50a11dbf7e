"""Role logic: prompts in, structured answers out. No HTTP here (see `transport.py` / `embedded.py`).

Each role is a prompt template (per domain, in `builder/prompts/<domain>/`), a JSON schema for its answer and a
tolerant parser that returns None instead of raising, so a bad answer becomes data, not a crash.

Role outputs are untrusted text: they are only ever *substituted into* templates (`string.Template`, one pass,
values are never re-parsed as templates) and never evaluated.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

ROLE_NAMES = ("attacker", "defender", "judge")
_DECODER = json.JSONDecoder()

# A refusal is data (judge_status="refused"), not a parse error.
_REFUSAL = re.compile(r"\b(I can(?:no|')t|I cannot|I'm sorry|I am sorry|I won't|as an AI|I am unable|I'm unable)\b", re.I)


@dataclass(frozen=True)
class Template:
    """A role prompt: system and user parts with `$placeholders`."""

    system: str
    user: str
    sha256: str

    def messages(self, **values: str) -> list[dict[str, str]]:
        # substitute() raises on a missing placeholder: a template bug must not pass silently.
        return [
            {"role": "system", "content": string.Template(self.system).substitute(values).strip()},
            {"role": "user", "content": string.Template(self.user).substitute(values).strip()},
        ]


@dataclass(frozen=True)
class Criterion:
    name: str
    description: str
    levels: dict[int, str]


@dataclass(frozen=True)
class Rubric:
    """Judge rubric as data: quality criteria (each scored 1-5) and the complexity scale."""

    quality: list[Criterion]
    complexity_description: str
    complexity_levels: dict[int, str]
    sha256: str

    def text(self) -> str:
        lines = []
        for c in self.quality:
            anchors = "; ".join(f"{k}={v}" for k, v in sorted(c.levels.items()))
            lines.append(f"- {c.name}: {c.description} ({anchors})")
        scale = "; ".join(f"{k}={v}" for k, v in sorted(self.complexity_levels.items()))
        lines.append(f"- complexity: {self.complexity_description} ({scale})")
        return "\n".join(lines)


@dataclass(frozen=True)
class PromptSet:
    attacker: Template
    defender: Template
    judge: Template
    rubric: Rubric

    def hashes(self) -> dict[str, str]:
        """sha256 of each template file, recorded in the dataset for provenance."""
        return {
            "attacker": self.attacker.sha256,
            "defender": self.defender.sha256,
            "judge": self.judge.sha256,
            "rubric": self.rubric.sha256,
        }


def _read_template(path: Path) -> Template:
    text = path.read_text()
    match = re.fullmatch(r"\s*### system\n(.*?)### user\n(.*)", text, re.S)
    if not match:
        raise ValueError(f"{path}: a prompt template needs a '### system' section then a '### user' section")
    return Template(match.group(1), match.group(2), hashlib.sha256(text.encode()).hexdigest())


def _read_rubric(path: Path) -> Rubric:
    text = path.read_text()
    data = yaml.safe_load(text)
    try:
        quality = [Criterion(c["name"], c["description"], {int(k): v for k, v in c["levels"].items()}) for c in data["quality"]]
        complexity = data["complexity"]
        levels = {int(k): v for k, v in complexity["levels"].items()}
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: rubric needs quality[name, description, levels] and complexity[description, levels] ({err})") from err
    if not quality or sorted(levels) != [1, 2, 3, 4, 5]:
        raise ValueError(f"{path}: rubric needs at least one quality criterion and complexity levels 1-5")
    return Rubric(quality, complexity["description"], levels, hashlib.sha256(text.encode()).hexdigest())


def load_prompts(domain: str, folder: str | None = None) -> PromptSet:
    """Templates from `folder`, or the packaged ones for `domain`."""
    root = Path(folder) if folder else Path(str(resources.files("builder") / "prompts" / domain))
    missing = [name for name in ("attacker.txt", "defender.txt", "judge.txt", "rubric.yaml") if not (root / name).is_file()]
    if missing:
        raise ValueError(f"prompts: {root} lacks {', '.join(missing)}; copy builder/prompts/{domain}/ as a start")
    return PromptSet(
        attacker=_read_template(root / "attacker.txt"),
        defender=_read_template(root / "defender.txt"),
        judge=_read_template(root / "judge.txt"),
        rubric=_read_rubric(root / "rubric.yaml"),
    )


# --- schemas ---------------------------------------------------------------------------------------------


def _answer_schema(answer_format: str) -> dict[str, Any]:
    if answer_format == "choice":
        return {"type": "string", "enum": ["A", "B", "C", "D", "E"]}
    return {"type": "string"}


def attack_schema(answer_format: str, with_code: bool = True) -> dict[str, Any]:
    """The Attacker's answer. The explanation comes before the reference answer so the model reasons first;
    `verification_code` is asked for only when the Judge will run it."""
    properties = {
        "question": {"type": "string"},
        "explanation": {"type": "string"},
        "reference_answer": _answer_schema(answer_format),
    }
    if with_code:
        properties["verification_code"] = {"type": "string"}
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def defense_schema(answer_format: str) -> dict[str, Any]:
    properties = {"reasoning": {"type": "string"}, "answer": _answer_schema(answer_format)}
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def verdict_schema(rubric: Rubric) -> dict[str, Any]:
    score = {"type": "integer", "minimum": 1, "maximum": 5}
    properties: dict[str, Any] = {"rationale": {"type": "string"}, "question_valid": {"type": "boolean"}, "defender_correct": {"type": "boolean"}}
    properties.update({c.name: score for c in rubric.quality})
    properties["complexity"] = score
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


# --- parsing ---------------------------------------------------------------------------------------------


def extract_json(text: str) -> dict[str, Any] | None:
    """The first JSON object in `text` (code fences, prose around it and trailing commas tolerated), else None."""
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


def _text(value: Any) -> str | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def normalize_choice(value: str | None) -> str | None:
    """'B', '(b)', 'B) Aspirin', 'Option B' -> 'B'; anything else -> None."""
    if value is None:
        return None
    match = re.match(r"^\s*(?:option\s*)?\(?([A-Ea-e])\)?(?:[\s.:)\-]|$)", value, re.I)
    return match.group(1).upper() if match else None


def _answer(value: Any, answer_format: str) -> str | None:
    text = _text(value)
    return normalize_choice(text) if answer_format == "choice" else text


@dataclass
class Attack:
    question: str
    explanation: str
    reference_answer: str
    verification_code: str


def parse_attack(text: str, answer_format: str) -> Attack | None:
    data = extract_json(text)
    if data is None:
        return None
    question, explanation = _text(data.get("question")), _text(data.get("explanation"))
    answer = _answer(data.get("reference_answer"), answer_format)
    if not (question and explanation and answer):
        return None
    code = data.get("verification_code")
    return Attack(question, explanation, answer, code.strip() if isinstance(code, str) else "")


@dataclass
class Defense:
    reasoning: str
    answer: str


def parse_defense(text: str, answer_format: str) -> Defense | None:
    data = extract_json(text)
    if data is None:
        return None
    answer = _answer(data.get("answer"), answer_format)
    if answer is None:
        return None
    return Defense(_text(data.get("reasoning")) or "", answer)


@dataclass
class Verdict:
    rationale: str
    question_valid: bool
    defender_correct: bool
    scores: dict[str, int]
    complexity: int

    @property
    def reasoning_quality(self) -> float:
        return sum(self.scores.values()) / len(self.scores)


def parse_verdict(text: str, rubric: Rubric) -> Verdict | None:
    data = extract_json(text)
    if data is None:
        return None
    flags = [data.get("question_valid"), data.get("defender_correct")]
    if not all(isinstance(flag, bool) for flag in flags):
        return None
    scores = {}
    for name in [c.name for c in rubric.quality] + ["complexity"]:
        value = data.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 5:
            return None
        scores[name] = int(round(value))
    complexity = scores.pop("complexity")
    return Verdict(_text(data.get("rationale")) or "", flags[0], flags[1], scores, complexity)


def quality_level(score: float) -> int:
    """Band of a 1-5 judge score: L1 < 1.5 <= L2 < 2.5 <= L3 < 3.5 <= L4 < 4.5 <= L5 (the paper's L4 = 3.5-4.49)."""
    return min(5, max(1, int(score + 0.5)))


# --- prompts ---------------------------------------------------------------------------------------------


CODE_INSTRUCTION = (
    'If a calculation is needed, put a short Python program that prints the computed value in "verification_code", '
    "else leave it empty."
)


def attack_messages(prompts: PromptSet, *, capability: str, complexity: int, feedback: str, with_code: bool = True) -> list[dict[str, str]]:
    """`$code_instruction` asks for a verification program only when the Judge will run one."""
    return prompts.attacker.messages(
        capability=capability,
        complexity=str(complexity),
        complexity_guide=prompts.rubric.complexity_levels[complexity],
        feedback=feedback,
        code_instruction=CODE_INSTRUCTION if with_code else "",
    )


def defense_messages(prompts: PromptSet, *, question: str) -> list[dict[str, str]]:
    return prompts.defender.messages(question=question)


def verdict_messages(prompts: PromptSet, *, attack: Attack, defense: Defense | None, tool_results: str) -> list[dict[str, str]]:
    return prompts.judge.messages(
        question=attack.question,
        reference_answer=attack.reference_answer,
        explanation=attack.explanation,
        defender_reasoning=defense.reasoning if defense else "(no answer)",
        defender_answer=defense.answer if defense else "(no answer)",
        tool_results=tool_results,
        rubric=prompts.rubric.text(),
    )


def feedback_text(history: list[dict[str, Any]], limit: int) -> str:
    """What the Attacker learns from earlier rounds: recent judged questions, failed or solved, and why."""
    if limit == 0 or not history:
        return ""
    lines = ["Feedback from earlier rounds (write something new and harder than the solved ones):"]
    for row in history[-limit:]:
        outcome = "Defender FAILED" if not row["defender_correct"] else "Defender solved"
        lines.append(f"- [{outcome}] {_clip(row['question'], 200)} | Judge: {_clip(row['judge_rationale'], 150)}")
    return "\n".join(lines) + "\n"


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
