"""A domain's prompt set: the four role templates and the Judge's rubric, loaded from a folder and checked.

The packaged sets live in `builder/domains/<domain>/` (beside the domain's corpus); a recipe's `prompts` folder
replaces them. Role outputs are untrusted text: they are only ever *substituted into* templates (`string.Template`,
one pass, values are never re-parsed as templates) and never evaluated.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from pathlib import Path

import yaml

from builder.domains import domain_folder

ROLE_NAMES = ("attacker", "defender", "judge")
TEMPLATE_FILES = ("attacker.txt", "defender.txt", "solver.txt", "judge.txt")


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
            f"{path}: not a rubric ({what}). Fix: write it as {shape}, like builder/domains/medical/rubric.yaml"
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
    root = Path(folder) if folder else domain_folder(domain)
    if not root.is_dir():
        raise ValueError(f"prompts: {root} is not a folder. Fix: point prompts at a copy of builder/domains/medical/")
    missing = [name for name in (*TEMPLATE_FILES, "rubric.yaml") if not (root / name).is_file()]
    if missing:
        source = domain if domain in ("math", "science", "medical") else "medical"
        raise ValueError(
            f"prompts: {root} lacks {', '.join(missing)}. Fix: copy them from builder/domains/{source}/ and edit them"
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
    where = Path(folder) if folder else Path("builder/domains")
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
