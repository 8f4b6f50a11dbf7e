"""Role logic: prompts in, structured answers out. No HTTP here (see `transport.py` / `embedded.py`).

Each role is a prompt template (per domain, in `builder/prompts/<domain>/`), a JSON schema for its answer and a
tolerant parser that returns the parsed value or a `Rejected` (why it could not be used) instead of raising, so a
bad answer becomes data, not a crash, and a re-ask can say what was wrong. The Judge has two templates: `solver`
(it answers the question blind, before it sees the reference) and `judge` (the verdict).

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

from nanoflux.questions import LETTERS, question_text

ROLE_NAMES = ("attacker", "defender", "judge")
TEMPLATE_FILES = ("attacker.txt", "defender.txt", "solver.txt", "judge.txt")
# strict=False: raw control characters (a newline) inside a string are accepted. llama-cpp-python's JSON-schema grammar
# allows them (its `char` rule is `[^"\\]`), so a schema-constrained reply can hold them; strict JSON would refuse it.
_DECODER = json.JSONDecoder(strict=False)

# A refusal is data (judge_status="refused"), not a parse error.
_REFUSAL = re.compile(
    r"\b(I can(?:no|')t|I cannot|I'm sorry|I am sorry|I won't|as an AI|I am unable|I'm unable)\b", re.I
)


@dataclass(frozen=True)
class Template:
    """A role prompt: system and user parts with `$placeholders`."""

    system: str
    user: str
    sha256: str

    def messages(self, *, reply_format: str = "", **values: str) -> list[dict[str, str]]:
        """System and user messages; `reply_format` (the JSON keys and an example) ends the user message."""
        # substitute() raises on a missing placeholder: a template bug must not pass silently.
        user = string.Template(self.user).substitute(values).strip()
        return [
            {"role": "system", "content": string.Template(self.system).substitute(values).strip()},
            {"role": "user", "content": f"{user}\n\n{reply_format}".strip()},
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
    solver: Template
    judge: Template
    rubric: Rubric

    def hashes(self) -> dict[str, str]:
        """sha256 of each template file, recorded in the dataset for provenance."""
        return {
            "attacker": self.attacker.sha256,
            "defender": self.defender.sha256,
            "solver": self.solver.sha256,
            "judge": self.judge.sha256,
            "rubric": self.rubric.sha256,
        }


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}). Fix: save the file as UTF-8") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror or err}). Fix: make the file readable") from None


def _read_template(path: Path) -> Template:
    text = _read_text(path)
    match = re.fullmatch(r"\s*### system\n(.*?)### user\n(.*)", text, re.S)
    if not match:
        lacking = [header for header in ("### system", "### user") if not re.search(rf"^{header}\s*$", text, re.M)]
        problem = (
            f"lacks the {' and the '.join(repr(h) for h in lacking)} section"
            if lacking
            else "has its sections out of order"
        )
        raise ValueError(
            f"{path}: {problem}. Fix: start the file with a line '### system', then the system prompt, "
            "then a line '### user' and the user prompt"
        )
    if not match.group(2).strip():
        raise ValueError(f"{path}: the '### user' section is empty. Fix: write the user prompt under '### user'")
    return Template(match.group(1), match.group(2), hashlib.sha256(text.encode()).hexdigest())


def _read_rubric(path: Path) -> Rubric:
    text = _read_text(path)
    shape = (
        "quality: [{name, description, levels: {1: ..., 5: ...}}], complexity: {description, levels: {1: ..., 5: ...}}"
    )
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ValueError(
            f"{path}: not valid YAML{at} ({getattr(err, 'problem', None) or err}). Fix: correct the YAML syntax"
        ) from None
    try:
        quality = [
            Criterion(c["name"], c["description"], {int(k): v for k, v in c["levels"].items()})
            for c in data["quality"]
        ]
        complexity = data["complexity"]
        levels = {int(k): v for k, v in complexity["levels"].items()}
        complexity_description = complexity["description"]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        what = f"missing key {err}" if isinstance(err, KeyError) else f"{type(err).__name__}: {err}"
        raise ValueError(
            f"{path}: not a rubric ({what}). Fix: write it as {shape}, like builder/prompts/medical/rubric.yaml"
        ) from None
    if not quality or sorted(levels) != [1, 2, 3, 4, 5]:
        raise ValueError(
            f"{path}: a rubric needs at least one quality criterion and complexity levels 1-5 (got {sorted(levels)})."
            f" Fix: write it as {shape}"
        )
    names = [c.name for c in quality]
    reserved = {"rationale", "question_valid", "reference_correct", "own_error", "defender_correct", "complexity"}
    bad = [n for n in names if not isinstance(n, str) or not n.strip() or n in reserved]
    if bad or len(set(names)) != len(names):
        raise ValueError(
            f"{path}: quality criterion names must be distinct non-empty strings, not {sorted(reserved)} (got"
            f" {names}). Fix: rename them, e.g. clinical_accuracy"
        )
    return Rubric(quality, complexity_description, levels, hashlib.sha256(text.encode()).hexdigest())


def load_prompts(domain: str, folder: str | None = None) -> PromptSet:
    """Templates from `folder`, or the packaged ones for `domain`."""
    root = Path(folder) if folder else Path(str(resources.files("builder") / "prompts" / domain))
    if not root.is_dir():
        raise ValueError(f"prompts: {root} is not a folder. Fix: point prompts at a copy of builder/prompts/medical/")
    missing = [name for name in (*TEMPLATE_FILES, "rubric.yaml") if not (root / name).is_file()]
    if missing:
        source = domain if domain in ("math", "science", "medical") else "medical"
        raise ValueError(
            f"prompts: {root} lacks {', '.join(missing)}. Fix: copy them from builder/prompts/{source}/ and edit them"
        )
    return PromptSet(
        attacker=_read_template(root / "attacker.txt"),
        defender=_read_template(root / "defender.txt"),
        solver=_read_template(root / "solver.txt"),
        judge=_read_template(root / "judge.txt"),
        rubric=_read_rubric(root / "rubric.yaml"),
    )


# The placeholders each template may use: the keyword arguments attack_messages, defense_messages, solve_messages and
# verdict_messages pass (reply_format is appended to the user message, not a placeholder); and the ones it must use.
PLACEHOLDERS = {
    "attacker": ("capability", "complexity", "complexity_guide", "feedback", "n_options", "letter_list"),
    "defender": ("question",),
    "solver": ("question",),
    "judge": (
        "question",
        "reference_answer",
        "explanation",
        "blind_answer",
        "blind_reasoning",
        "defender_reasoning",
        "defender_answer",
        "tool_results",
        "rubric",
    ),
}
REQUIRED_PLACEHOLDERS = {
    "attacker": ("capability",),
    "defender": ("question",),
    "solver": ("question",),
    "judge": ("question", "reference_answer", "defender_answer"),
}


def check_templates(prompts: PromptSet, folder: str | Path | None = None) -> None:
    """Render every template once with stand-in values, so that an unknown `$placeholder`, a stray `$` or a missing
    required placeholder fails at start (ValueError naming the file and the fix), not mid-build after requests."""
    where = Path(folder) if folder else Path("builder/prompts")
    for role, allowed in PLACEHOLDERS.items():
        template: Template = getattr(prompts, role)
        path = where / f"{role}.txt"
        used: set[str] = set()
        for part in (template.system, template.user):
            t = string.Template(part)
            if not t.is_valid():
                bad = next(m for m in t.pattern.finditer(part) if m.group("invalid") is not None)
                line = part[: bad.start("invalid")].count("\n") + 1
                snippet = part[bad.start("invalid") : bad.start("invalid") + 12].splitlines()[0]
                raise ValueError(
                    f"{path}: a '$' that starts no placeholder ({snippet!r}, line {line} of its section). "
                    f"Fix: write $$ for a literal dollar sign, or use one of ${', $'.join(allowed)}"
                )
            used |= set(t.get_identifiers())
        unknown = sorted(used - set(allowed))
        if unknown:
            raise ValueError(
                f"{path}: unknown placeholder(s) {', '.join('$' + u for u in unknown)}. "
                f"Fix: use only ${', $'.join(allowed)} (write $$ for a literal dollar sign)"
            )
        missing = [name for name in REQUIRED_PLACEHOLDERS[role] if name not in used]
        if missing:
            raise ValueError(
                f"{path}: the template never uses {', '.join('$' + m for m in missing)}. Fix: put it in the '### user'"
                " section"
            )
        template.messages(reply_format="(reply format)", **{name: f"<{name}>" for name in allowed})


# --- schemas ---------------------------------------------------------------------------------------------


# A text the parser requires to be non-empty. Said in the schema too, so that a server that constrains decoding to it
# cannot return `""` where a question, an option or an answer must be: llama.cpp's grammar otherwise allows it, and the
# 135M model, shown weak feedback, filled the keys of half its attacks with empty strings.
_REQUIRED_TEXT: dict[str, Any] = {"type": "string", "minLength": 1}


def _answer_schema(answer_format: str, n_options: int) -> dict[str, Any]:
    if answer_format == "choice":
        return {"type": "string", "enum": list(LETTERS[:n_options])}
    return dict(_REQUIRED_TEXT)


def attack_schema(answer_format: str, n_options: int = 5) -> dict[str, Any]:
    """The Attacker's answer. A multiple-choice question keeps its stem and its options apart, so the dataset can put
    it to a model exactly as evaluation does; the explanation comes before the reference answer so the model reasons
    first."""
    properties: dict[str, Any] = {"question": dict(_REQUIRED_TEXT)}
    if answer_format == "choice":
        properties["options"] = {
            "type": "array",
            "items": dict(_REQUIRED_TEXT),
            "minItems": n_options,
            "maxItems": n_options,
        }
    properties["explanation"] = dict(_REQUIRED_TEXT)
    properties["reference_answer"] = _answer_schema(answer_format, n_options)
    return _object(properties)


def defense_schema(answer_format: str, n_options: int = 5) -> dict[str, Any]:
    return _object({"reasoning": {"type": "string"}, "answer": _answer_schema(answer_format, n_options)})


def solve_schema(answer_format: str, n_options: int = 5) -> dict[str, Any]:
    """The Judge's blind solution: reasoning, a program for the sandbox (required for numeric answers), its answer."""
    program = (
        dict(_REQUIRED_TEXT) if answer_format == "number" else {"type": "string"}
    )  # optional for the other formats
    return _object(
        {"reasoning": {"type": "string"}, "program": program, "answer": _answer_schema(answer_format, n_options)}
    )


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
    return _object(properties)


def _object(properties: dict[str, Any]) -> dict[str, Any]:
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


# --- parsing ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejected:
    """Why a reply could not be used; said back to the role when it is asked again."""

    reason: str


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


def _text(value: Any) -> str | None:
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


def _answer(value: Any, answer_format: str, n_options: int) -> str | None:
    text = _text(value)
    return normalize_choice(text, n_options) if answer_format == "choice" else text


_NO_JSON = Rejected("the reply holds no JSON object")
_INLINE_OPTION = re.compile(r"\(([A-J])\)\s*")


def _options(data: dict[str, Any], question: str) -> tuple[str, list[str]]:
    """The options as a list of texts: from `options` (a list, or a mapping {A: text}), else from the stem when a
    model wrote them inline as `(A) x (B) y`, labels in order."""
    value = data.get("options")
    if isinstance(value, dict):
        value = [value[k] for k in sorted(value, key=str)]
    if isinstance(value, list):
        texts = [_text(v) for v in value]
        return question, [re.sub(r"^\(?[A-J][.)]\s+", "", t) for t in texts if t]
    labels = list(_INLINE_OPTION.finditer(question))
    if len(labels) < 2 or "".join(m.group(1) for m in labels) != LETTERS[: len(labels)]:
        return question, []
    bounds = [m.start() for m in labels[1:]] + [len(question)]
    return question[: labels[0].start()].strip(), [question[m.end() : end].strip() for m, end in zip(labels, bounds)]


@dataclass
class Attack:
    question: str
    """The stem (multiple choice: without its options)."""
    options: list[str]
    """Multiple choice: the option texts, A first; empty otherwise."""
    explanation: str
    reference_answer: str


def parse_attack(text: str, answer_format: str, n_options: int = 5) -> Attack | Rejected:
    data = extract_json(text)
    if data is None:
        return _NO_JSON
    question, explanation = _text(data.get("question")), _text(data.get("explanation"))
    if not question:
        return Rejected('"question" is missing or empty')
    if not explanation:
        return Rejected('"explanation" is missing or empty')
    options: list[str] = []
    if answer_format == "choice":
        question, options = _options(data, question)
        if len(options) != n_options:
            return Rejected(f'"options" must list exactly {n_options} option texts (got {len(options)})')
    answer = _answer(data.get("reference_answer"), answer_format, n_options)
    if not answer:
        expected = f"one letter {LETTERS[0]}-{LETTERS[n_options - 1]}" if answer_format == "choice" else "the answer"
        return Rejected(f'"reference_answer" must be {expected} (got {data.get("reference_answer")!r})')
    return Attack(question, options, explanation, answer)


@dataclass
class Defense:
    reasoning: str
    answer: str


def parse_defense(text: str, answer_format: str, n_options: int = 5) -> Defense | Rejected:
    data = extract_json(text)
    if data is None:
        return _NO_JSON
    answer = _answer(data.get("answer"), answer_format, n_options)
    if answer is None:
        return Rejected(f'"answer" is missing or not a valid answer (got {data.get("answer")!r})')
    return Defense(_text(data.get("reasoning")) or "", answer)


@dataclass
class Solution:
    """The Judge's blind solution: written before it sees the reference answer."""

    reasoning: str
    program: str
    answer: str


def parse_solution(text: str, answer_format: str, n_options: int = 5) -> Solution | Rejected:
    defense = parse_defense(text, answer_format, n_options)
    if isinstance(defense, Rejected):
        return defense
    program = (extract_json(text) or {}).get("program")
    program = program.strip() if isinstance(program, str) else ""
    if answer_format == "number" and not program:
        return Rejected('"program" must be a Python program that computes and prints the answer')
    return Solution(defense.reasoning, program, defense.answer)


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


def parse_verdict(text: str, rubric: Rubric) -> Verdict | Rejected:
    data = extract_json(text)
    if data is None:
        return _NO_JSON
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
    own_error = _text(data.get("own_error")) or ""
    return Verdict(
        _text(data.get("rationale")) or "",
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


# --- prompts ---------------------------------------------------------------------------------------------


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


def defense_messages(
    prompts: PromptSet, *, attack: Attack, answer_format: str, n_options: int
) -> list[dict[str, str]]:
    return prompts.defender.messages(
        reply_format=reply_format(defense_schema(answer_format, n_options)),
        question=question_text(attack.question, attack.options),
    )


def solve_messages(prompts: PromptSet, *, attack: Attack, answer_format: str, n_options: int) -> list[dict[str, str]]:
    """The Judge's blind solve: the question alone, never the reference or the Attacker's explanation."""
    return prompts.solver.messages(
        reply_format=reply_format(solve_schema(answer_format, n_options)),
        question=question_text(attack.question, attack.options),
    )


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


# Characters per token, to keep feedback within a token budget without a tokenizer for every endpoint's model.
CHARS_PER_TOKEN = 4


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
