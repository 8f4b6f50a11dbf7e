"""The roles as self-contained tasks: prompts in, typed answers and row columns out. No HTTP here.

Each role step is a `Task` (distilabel-style) that owns its messages (from the domain's templates), the JSON schema
of its reply, a tolerant parse returning the typed value or `Rejected`, its re-ask, and the columns it contributes
to the dataset row; `builder/calls.py` sends and journals, `builder/rounds.py` schedules.

- `task.py`: the Task shape, `Outcome`, `Rejected`, tolerant JSON reading, reply format, re-ask
- `prompts.py`: a domain's templates and rubric (`builder/domains/<domain>/`, or a recipe's `prompts` folder)
- `attacker.py`, `defender.py`: `Attacker` / `Attack`, `Defender` / `Defense`
- `solver.py`: the Judge's blind solve (`Solver` / `Solution`); `judge.py`: its verdict (`Judge` / `Verdict`)
"""

from __future__ import annotations

from builder.roles.attacker import (
    CHARS_PER_TOKEN,
    Attack,
    Attacker,
    attack_messages,
    attack_schema,
    feedback_text,
    parse_attack,
)
from builder.roles.defender import Defender, Defense, defense_messages, defense_schema, parse_defense
from builder.roles.judge import (
    Judge,
    Verdict,
    failed_judgement,
    is_numeric_answer,
    parse_verdict,
    quality_level,
    reference_ruling,
    verdict_messages,
    verdict_schema,
)
from builder.roles.prompts import (
    PLACEHOLDERS,
    REQUIRED_PLACEHOLDERS,
    ROLE_NAMES,
    TEMPLATE_FILES,
    Criterion,
    PromptSet,
    Rubric,
    Template,
    check_templates,
    load_prompts,
)
from builder.roles.solver import Solution, Solver, parse_solution, solve_messages, solve_schema
from builder.roles.task import (
    Outcome,
    Rejected,
    Task,
    extract_json,
    is_refusal,
    normalize_choice,
    reply_format,
    retry_messages,
)

__all__ = [
    "CHARS_PER_TOKEN",
    "PLACEHOLDERS",
    "REQUIRED_PLACEHOLDERS",
    "ROLE_NAMES",
    "TEMPLATE_FILES",
    "Attack",
    "Attacker",
    "Criterion",
    "Defender",
    "Defense",
    "Judge",
    "Outcome",
    "PromptSet",
    "Rejected",
    "Rubric",
    "Solution",
    "Solver",
    "Task",
    "Template",
    "Verdict",
    "attack_messages",
    "attack_schema",
    "check_templates",
    "defense_messages",
    "defense_schema",
    "extract_json",
    "failed_judgement",
    "feedback_text",
    "is_numeric_answer",
    "is_refusal",
    "load_prompts",
    "normalize_choice",
    "parse_attack",
    "parse_defense",
    "parse_solution",
    "parse_verdict",
    "quality_level",
    "reference_ruling",
    "reply_format",
    "retry_messages",
    "solve_messages",
    "solve_schema",
    "verdict_messages",
    "verdict_schema",
]
